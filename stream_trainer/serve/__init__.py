"""Versioned exports for serving, and the policy that declines one scoring worse than the last."""
