"""The Responses API: streamed, with the same deadlines, causes and usage as chat."""

import trio

from shardline import Endpoint, PipelineConfig, ResponsesRequest, open_pipeline
from shardline.testing import open_fake_server


async def main() -> None:
    async with open_fake_server() as server:
        config = PipelineConfig(endpoint=Endpoint(base_url=server.base_url), shard_count=2)
        async with open_pipeline(config) as pipeline:
            request = ResponsesRequest(
                input=[{"role": "user", "content": "Write a haiku about shards."}],
                params={"instructions": "Be brief.", "max_output_tokens": 7},
            )
            result = await pipeline.complete(request)
    print(result.text)
    print(result.finish_reason, result.usage)  # length: max_output_tokens cut it
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 7


trio.run(main)
