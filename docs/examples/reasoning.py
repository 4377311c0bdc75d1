"""A reasoning model: its thinking and its answer arrive in separate fields."""

import trio

from shardline import ChatRequest, Deadlines, Endpoint, PipelineConfig, open_pipeline
from shardline.testing import open_fake_server


async def main() -> None:
    async with open_fake_server() as server:  # reasoning_effort makes it think aloud first
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url),
            # Reasoning deltas are progress: the TTFT deadline is met by the first
            # thought, and the stall deadline applies while the model thinks.
            deadlines=Deadlines(ttft=120.0, stall=60.0, attempt=1800.0),
        )
        async with open_pipeline(config) as pipeline:
            request = ChatRequest(
                messages=[{"role": "user", "content": "What is 17 * 23?"}],
                params={"reasoning_effort": "high", "max_tokens": 8, "logprobs": True},
            )
            result = await pipeline.complete(request)
    print("thought:", result.reasoning)
    print("answer: ", result.text)
    print("tokens: ", [entry["token"] for entry in result.logprobs or ()])
    assert result.reasoning == "the quick brown fox"
    assert result.text == "the quick brown fox"
    assert result.refusal is None


trio.run(main)
