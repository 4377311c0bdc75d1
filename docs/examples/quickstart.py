import trio

from shardline import ChatRequest, Endpoint, PipelineConfig, open_pipeline
from shardline.testing import open_fake_server


async def main() -> None:
    # an OpenAI-compatible server, in-process
    async with open_fake_server() as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url), shard_count=4
        )
        async with open_pipeline(config) as pipeline:
            request = ChatRequest(messages=[{"role": "user", "content": "Say hello"}])
            result = await pipeline.complete(request)
            print(result.text)
            print(result.usage, "on shard", result.shard)


trio.run(main)
