"""One router per resource: games (register, token), actions (moves, outcomes, stats,
profiles), ws (the WebSocket), system (health, websocket-info, metrics), demo (the playable
page, development mode), admin (the loaded bundles and their hot reload)."""
