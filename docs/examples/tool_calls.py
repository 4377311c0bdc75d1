"""Extract structured data with function calling; the arguments are checked, never guessed."""

import trio

from shardline import ChatRequest, Endpoint, PipelineConfig, open_pipeline
from shardline.errors import ToolArgumentsError
from shardline.testing import open_fake_server

EXTRACT = {
    "type": "function",
    "function": {
        "name": "record_city",
        "description": "Record the city the text mentions.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}


async def main() -> None:
    async with open_fake_server() as server:  # it answers a request with tools with a call
        config = PipelineConfig(endpoint=Endpoint(base_url=server.base_url), shard_count=2)
        async with open_pipeline(config) as pipeline:
            request = ChatRequest(
                messages=[{"role": "user", "content": "I moved to Oslo last year."}],
                params={"tools": [EXTRACT], "tool_choice": "required", "max_tokens": 6},
            )
            result = await pipeline.complete(request)
    print(result.finish_reason)  # tool_calls
    for call in result.tool_calls:
        try:
            arguments = call.arguments_json()
        except ToolArgumentsError as exc:  # the model wrote something that is not JSON
            print("unusable call:", exc)
            continue
        print(call.id, call.name, arguments)
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls[0].arguments_json() == {"text": "the quick brown fox jumps over"}


trio.run(main)
