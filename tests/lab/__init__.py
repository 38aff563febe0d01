"""The two-host lab (test code only; see README.md beside this file)."""
