"""One router per resource: games (register, token), actions (moves, outcomes, stats,
profiles), ws (the WebSocket), system (health, websocket-info, metrics)."""
