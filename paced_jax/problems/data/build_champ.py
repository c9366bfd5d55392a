"""Rebuild champ.jsonl from the CHAMP wheel (MIT): problems whose answer is one number.

  pip download --no-deps champ-dataset==1.0.0 -d /tmp/champ && unzip -o /tmp/champ/*.whl -d /tmp/champ
  python paced_jax/data/build_champ.py /tmp/champ/champ_dataset/dataset_files/v0.json

Kept: answers that are a bare number, or a number followed by a gloss ("0 is the only possible
value", "100 (i.e., all values)"), which the verifier can grade. The rest (yes/no, formulas,
sets of solutions, prose) are left out: no automatic grader judges them reliably.
"""

from __future__ import annotations

import json
import os
import re
import sys

_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")
_GLOSSED = re.compile(r"^(-?\d+)(?: is the only possible value| \(.*\))$")


def answer_number(answer: str) -> str | None:
  answer = answer.strip()
  if _NUMBER.match(answer):
    return answer
  m = _GLOSSED.match(answer)
  return m.group(1) if m else None


def main(v0_json: str) -> None:
  with open(v0_json, encoding="utf-8") as f:
    problems = json.load(f)["problems"]
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "champ.jsonl")
  kept = 0
  with open(out, "w", encoding="utf-8") as f:
    for pid, p in problems.items():  # the file's own order: by category, then number
      answer = answer_number(p["_answer"])
      if answer is None:
        continue
      steps = p["solution"]["steps"] if isinstance(p["solution"], dict) else []
      f.write(json.dumps({"id": pid, "problem": p["_text"], "answer": answer, "category": p["category"],
                          "solution": " ".join(s["_text"] for s in steps)}, ensure_ascii=False) + "\n")
      kept += 1
  print(f"{out}: {kept} of {len(problems)} problems")


if __name__ == "__main__":
  main(sys.argv[1])
