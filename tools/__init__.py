"""Research drivers and one-off scripts of the repository; not part of the installed package."""
