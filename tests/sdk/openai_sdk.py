"""The official `openai` Python package, unchanged, as a client of chatgate's /v1.

Run by tests/api/v1_sdk.rs with CHATGATE_BASE_URL (.../v1) and CHATGATE_KEY (a client key);
it prints what the SDK made of each call as one JSON object, in the same shape as
openai-sdk.mjs prints, which the Rust test checks.
"""

import json
import os
import sys

import openai
from openai import OpenAI

base_url = os.environ.get("CHATGATE_BASE_URL")
api_key = os.environ.get("CHATGATE_KEY")
if not base_url or not api_key:
    print("set CHATGATE_BASE_URL and CHATGATE_KEY", file=sys.stderr)
    sys.exit(2)

# No retries: a 429 must reach the caller as it came.
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0)
MODEL = "mock-model"


def user(content):
    return [{"role": "user", "content": content}]


def caught(call):
    """What the SDK raised, or None."""
    try:
        call()
        return None
    except openai.OpenAIError as e:
        response = getattr(e, "response", None)
        return {
            "class": type(e).__name__,
            "status": getattr(e, "status_code", None),
            "message": str(e),
            "code": getattr(e, "code", None),
            "type": getattr(e, "type", None),
            "retryAfter": response.headers.get("retry-after") if response is not None else None,
            "isApiError": isinstance(e, openai.APIError),
            "isRateLimit": isinstance(e, openai.RateLimitError),
            "isBadRequest": isinstance(e, openai.BadRequestError),
            "isAuthentication": isinstance(e, openai.AuthenticationError),
        }


out = {}

# Streamed, with usage.
stream = client.chat.completions.create(
    model=MODEL,
    messages=user("hello from the sdk [mock:words=3]"),
    stream=True,
    stream_options={"include_usage": True},
)
ids, text, finish, usage, roles = set(), "", None, None, []
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage:
        usage = chunk.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    for choice in chunk.choices:
        if choice.delta.role:
            roles.append(choice.delta.role)
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
out["streamed"] = {"text": text, "ids": sorted(ids), "finish": finish, "usage": usage, "roles": roles}

# Not streamed.
completion = client.chat.completions.create(model=MODEL, messages=user("all at once"))
choice = completion.choices[0]
out["completion"] = {
    "object": completion.object,
    "text": choice.message.content,
    "role": choice.message.role,
    "finish": choice.finish_reason,
    "usage": completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}),
}

# Tool calls, reassembled by the SDK's own stream helper (which takes strict tools only).
tools = [
    {
        "type": "function",
        "function": {
            "name": f"lookup_{i}",
            "strict": True,
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "n": {"type": "integer"}},
                "required": ["query", "n"],
                "additionalProperties": False,
            },
        },
    }
    for i in range(2)
]
with client.chat.completions.stream(
    model=MODEL, messages=user("weather [mock:tool-calls=2]"), tools=tools
) as helper:
    final = helper.get_final_completion()
message = final.choices[0].message
out["tools"] = {
    "finish": final.choices[0].finish_reason,
    "content": message.content,
    "calls": [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments} for c in message.tool_calls
    ],
}

# The model list.
out["models"] = [{"id": m.id, "object": m.object, "owned_by": m.owned_by} for m in client.models.list()]

# Typed errors. The 429 asks for a wait longer than any retry budget: it reaches the caller
# at once.
out["rateLimited"] = caught(
    lambda: client.chat.completions.create(
        model=MODEL, messages=user("[mock:status=429] [mock:retry-after=30]"), stream=True
    )
)
out["badRequest"] = caught(lambda: client.chat.completions.create(model=MODEL, messages=user("[mock:status=400]")))
out["refusedN"] = caught(lambda: client.chat.completions.create(model=MODEL, messages=user("two"), n=2))
out["unauthorized"] = caught(
    lambda: OpenAI(base_url=base_url, api_key="sk-not-a-client-key", max_retries=0).models.list()
)


def read_to_the_error():
    for _chunk in client.chat.completions.create(
        model=MODEL, messages=user("partial [mock:words=5] [mock:error-after=2]"), stream=True
    ):
        pass


out["midStream"] = caught(read_to_the_error)

print(json.dumps(out))
