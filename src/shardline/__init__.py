"""shardline: hang-proof sharded requests to OpenAI-compatible APIs, on trio."""
