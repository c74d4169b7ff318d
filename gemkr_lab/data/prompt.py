"""The paper's instruction template (gemkr_spec.md §3.1), with the image placeholder the model fills."""

IMAGE_PLACEHOLDER = "<ImageHere>"
TEMPLATE = (
    "Below is a knowledge completion task. Please provide the knowledge keywords that can answer this "
    "question based on the Image.\n\n### Question:\n{input}\n\n### Image:\n" + IMAGE_PLACEHOLDER + "\n\n### Response:\n"
)


def query_input(question: str, caption: str, append_caption: bool) -> str:
    """The `{input}` of the template: the question, with the caption after it when `append_caption`."""
    if append_caption and caption:
        return f"{question} {caption}"
    return question


def build_prompt(question: str, caption: str, append_caption: bool) -> tuple[str, str]:
    """The prompt split at the image placeholder: (text before the visual tokens, text after them)."""
    before, after = TEMPLATE.format(input=query_input(question, caption, append_caption)).split(IMAGE_PLACEHOLDER)
    return before, after
