"""Process plumbing: how one replica runs its pipelines (one process each) under a supervisor."""
