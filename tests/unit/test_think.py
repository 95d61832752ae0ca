import pytest

from finetune.data.prompts import PLAIN_CLOSE, PLAIN_OPEN
from finetune.data.think import split_think

CASES = [
    # text, prompt opened the block, expected (thinking, answer, closed)
    ("<think>Weigh the options.</think>Answer: B", False, ("Weigh the options.", "Answer: B", True)),
    ("Weigh the options.\n</think>\n\nAnswer: B", True, ("Weigh the options.", "Answer: B", True)),  # R1: no open tag
    ("Weigh the options.\n</think>\n\nAnswer: B", False, ("Weigh the options.", "Answer: B", True)),
    ("<think>Still weighing", False, ("Still weighing", "", False)),  # open at the token limit
    ("Still weighing", True, ("Still weighing", "", False)),
    ("Epinephrine 0.5 mg IM.", False, ("", "Epinephrine 0.5 mg IM.", True)),  # no think block at all
    ("<think>Half a tag </thi", False, ("Half a tag", "", False)),  # closing tag still arriving
    ("<thi", False, ("", "", False)),  # opening tag still arriving
    ("\n<think>\n\n</think>\n\nShort answer", False, ("", "Short answer", True)),  # empty reasoning
    ("a</think>b</think>c", True, ("a", "b</think>c", True)),  # only the first close ends thinking
    ("", True, ("", "", False)),
]


@pytest.mark.parametrize(("text", "opened", "expected"), CASES)
def test_split_think(text, opened, expected):
    assert tuple(split_think(text, opened=opened)) == expected


def test_split_with_plain_template_markers():
    text = "Inferior MI with RV involvement.\n\n### Clinical Assessment:\nGive IV fluids."
    split = split_think(text, opened=True, open_tag=PLAIN_OPEN, close_tag=PLAIN_CLOSE)
    assert split == ("Inferior MI with RV involvement.", "Give IV fluids.", True)
