"""Scripts the tests run as child processes, and what they share."""
