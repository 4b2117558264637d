"""The data layer: sources, conversations, your own files, the chat template, shards, loaders."""
