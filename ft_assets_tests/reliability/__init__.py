"""Reliability and security: bad inputs, injected faults, concurrent runs, memory bounds, secret audits."""
