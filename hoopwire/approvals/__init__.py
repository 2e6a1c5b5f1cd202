"""Just-in-time approvals: held statements, decisions, announcements."""
