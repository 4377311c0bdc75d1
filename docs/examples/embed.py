"""Embed a pipeline in a trio application: tasks share it, each with its budget."""

import trio

from shardline import (
    AttemptError,
    ChatRequest,
    Deadlines,
    Endpoint,
    Pipeline,
    PipelineConfig,
    RetryPolicy,
    open_pipeline,
)
from shardline.errors import DeadlineExceeded, RateLimited
from shardline.testing import open_fake_server


async def answer(pipeline: Pipeline, question: str, *, item_id: str) -> str:
    """What one request handler of your application does."""
    request = ChatRequest(
        id=item_id, messages=[{"role": "user", "content": question}]
    )
    with trio.move_on_after(5):  # this caller's whole budget, every retry included
        try:
            result = await pipeline.complete(request)
        # the most specific first: a RateLimited is also an AttemptError
        except RateLimited as exc:
            return f"busy, retry in {exc.retry_after} s"
        # a ttft, stall, attempt, connect or pool timeout
        except DeadlineExceeded as exc:
            return f"too slow ({exc.cause})"
        except AttemptError as exc:  # any other failure, with a named cause
            return f"failed ({exc.cause})"
        return result.text
    return "no answer within 5 s"


async def main() -> None:
    # Scripted faults, on every attempt of two items: "hot" is rate limited,
    # "slow" stalls after its first token. The other items are served normally.
    faults = "rate_limit@item=hot:retry_after=0.1,stall_mid@item=slow"
    async with open_fake_server(faults=faults) as server:
        config = PipelineConfig(
            endpoint=Endpoint(base_url=server.base_url, model="fake-model"),
            shard_count=2,
            deadlines=Deadlines(stall=0.2),
            retry=RetryPolicy(max_attempts=2),
        )
        async with open_pipeline(config) as pipeline:
            answers: dict[str, str] = {}

            async def handle(item_id: str) -> None:
                answers[item_id] = await answer(
                    pipeline, f"Question {item_id}?", item_id=item_id
                )

            async with trio.open_nursery() as nursery:
                for item_id in ["a", "b", "c", "hot", "slow"]:
                    nursery.start_soon(handle, item_id)
            print(pipeline.statistics())

    for item_id, text in sorted(answers.items()):
        print(f"{item_id:>4}: {text}")
    assert answers["hot"] == "busy, retry in 0.1 s"
    assert answers["slow"] == "too slow (stall_timeout)"


trio.run(main)
