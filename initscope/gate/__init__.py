"""The CI gate: check (health checks, rules and expectations files) and diff of two targets."""
