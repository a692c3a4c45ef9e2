"""One record's decode → transform → encode (record) and the pipeline's processing stage."""
