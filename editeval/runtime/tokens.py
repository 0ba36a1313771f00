"""How a prompt and its target become token ids, the same way for editing and evaluation.

The teacher-forced protocol (`editeval.evaluation.metrics`) scores ``prompt + " " + target`` tokenised
in one piece, after the prompt tokenised alone; the methods train on exactly those inputs.
"""

from __future__ import annotations


def join_prompt_target(prompt: str, target: str) -> str:
    """The reference toolkit's join: one space between prompt and target.

    >>> join_prompt_target("The capital of France is", "Paris")
    'The capital of France is Paris'
    """
    return prompt + " " + target


def chat_prompt(tokenizer, prompt: str) -> str:
    """Wrap a prompt as one user turn with the model's chat template and the assistant header.

    Used identically in editing and evaluation when ``--chat-template`` is on; never applied to
    locality prompts. Raises ``ValueError`` when the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def encode(tokenizer, text: str, *, templated: bool = False) -> list[int]:
    """Token ids of ``text`` with the tokenizer's default special tokens (BOS for LLaMA).

    A chat-templated text already carries its special tokens, so none are added to it.
    """
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def teacher_forced_inputs(tokenizer, prompt: str, target: str, *, chat_template: bool = False):
    """``(ids, prompt_len)`` for the teacher-forced protocol.

    ``ids`` tokenises ``prompt + " " + target`` in one piece (the target in context);
    ``prompt_len`` is the length of the prompt tokenised alone, clamped so that at least one
    target token is scored.

    >>> class Tok:  # a whitespace "tokenizer": one id per word
    ...     vocab = {}
    ...     def __call__(self, text, add_special_tokens=True):
    ...         return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}
    >>> teacher_forced_inputs(Tok(), "The capital of France is", "Paris")
    ([0, 1, 2, 3, 4, 5], 5)
    """
    if chat_template:
        prompt = chat_prompt(tokenizer, prompt)
    ids = encode(tokenizer, join_prompt_target(prompt, target), templated=chat_template)
    prompt_len = len(encode(tokenizer, prompt, templated=chat_template))
    prompt_len = max(1, min(prompt_len, len(ids) - 1))
    return ids, prompt_len
