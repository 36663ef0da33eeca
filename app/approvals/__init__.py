"""Approvals pages: promotion requests, decisions, rollback."""
