"""A request's prompt as the model sees it: token ids, chat template applied.

The worker uses it on the engine's tokenizer; the API uses it on the same model's
tokenizer for dry runs and estimates, so both count the same tokens.
"""

from __future__ import annotations

from typing import Any

from app.jobs.lines import ChatBody, Request


def prompt_token_ids(tokenizer: Any, request: Request) -> list[int]:
    body = request.body
    if isinstance(body, ChatBody):
        messages: list[Any] = [{"role": m.role, "content": m.text()} for m in body.messages]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(str(rendered), add_special_tokens=False))
    if isinstance(body.prompt, list):
        return list(body.prompt)
    return list(tokenizer.encode(body.prompt))
