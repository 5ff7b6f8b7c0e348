"""Everything that runs in the supervisor process, on trio."""
