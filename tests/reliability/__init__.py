"""Reliability and security suite (issue 7): bad inputs and attacks, end states asserted."""
