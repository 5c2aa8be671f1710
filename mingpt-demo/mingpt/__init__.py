"""The small minGPT package the demo notebook imports (the course's mingpt-demo)."""
