"""Helpers shared by the tests: servers, keyrings, workspaces, the original tool, clusters."""
