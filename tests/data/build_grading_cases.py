"""Writes grading_cases.jsonl: responses with hand labels under MATH / AIME conventions.

Labels are a human grader's verdict, written before running any grader on them: correct iff the
response commits to one final answer that equals the truth mathematically (MATH conventions:
`\\%`, units, `^\\circ`, `\\$` and thousands separators do not matter; 12.5% is not 0.125; AIME
leading zeros do not matter). Two different final answers, or "5 or 6", are wrong (a hedge),
unless the truth itself lists several answers. A cut-off response (open box, half-written
answer, or `finished: false`: the sampler hit its token limit) is wrong. Run from the repo root:
`python tests/data/build_grading_cases.py`.
"""

import json
import pathlib
import random

T, F = True, False
CASES = []


def add(family, response, truth, label, note, finished=True):
  case = {"family": family, "response": response, "truth": truth, "label": label, "note": note}
  if not finished:
    case["finished"] = False
  CASES.append(case)


# --- no answer: nothing stated as final
for r, t, n in [
    (r"I'm not sure how to solve this problem.", "5", "gives up"),
    (r"We have 3 apples and 4 oranges, so there are several fruits in total.", "7", "prose with numbers"),
    (r"By Vieta's formulas the sum of the roots equals the negative of the linear coefficient over the leading one.",
     "-3", "method only"),
    ("", "0", "empty response"),
    (r"Let $x$ be the number. Then $2x + 3 = 11$, so $2x = 8$.", "4", "stops one step short"),
    (r"There are 12 months in a year and 7 days in a week.", "12", "truth occurs in prose"),
    (r"The answer depends on the value of $k$, which is not given.", "3", "refuses"),
    (r"Step 1: factor $91 = 7 \cdot 13$. Step 2: list the divisors 1, 7, 13 and 91.", "112", "no final sum"),
    (r"\boxed{}", "0", "empty box"),
    ("Answer:", "3", "empty answer line"),
    (r"I think it is somewhere between 40 and 50, but I cannot pin it down.", "45", "range, no answer"),
    (r"We need $2^{10} = 1024$ and then divide by the number of symmetries, which we still have to count.",
     "256", "intermediate only"),
    (r"The sum of the digits of 2024 is 8, and we need the smallest number with that digit sum greater than 2024.",
     "2033", "restates problem"),
]:
  add("no_answer", r, t, F, n)

# --- truncated: cut off before or while stating the answer
for r, t, n in [
    (r"Adding the terms, the answer is \boxed{12", "12", "open box"),
    (r"First \boxed{3} is a partial result. Now the final answer is \boxed{\frac{7}{", "\\frac{7}{2}", "open last box"),
    (r"Answer: $\frac{3}{", "\\frac{3}{4}", "half-written answer line"),
    (r"The sum $1 + 2 + \cdots + 100 = \frac{100 \cdot 101}{", "5050", "cut mid-fraction"),
    (r"The number of ways is $\frac{5!}{2!\,3!}$, which equals", "10", "cut before value"),
    (r"We compute $12 \times 11 = 132$. Dividing by 2 gives", "66", "cut before value"),
    (r"So the final answer is \boxed", "5", "cut after \\boxed"),
    (r"The final answer is \boxed{\sqrt{2", "\\sqrt{2}", "open nested box"),
    (r"\boxed{\frac{1}{2}} was my first guess, but actually it is \boxed{\frac{1}{3", "\\frac{1}{2}",
     "open second box"),
    (r"So the area is $\frac{25\sqrt{3}}{4}$ and the perimeter is then $", "\\frac{25\\sqrt{3}}{4}", "cut mid-formula"),
    (r"So $x = 4$. Check: $2(4) + 3 = 1", "4", "cut during the check"),
    (r"Thus the answer is $\frac{5}{", "\\frac{5}{6}", "cut in inline math"),
]:
  add("truncated", r, t, F, n)
add("truncated", r"\boxed{42}. To verify, note that $6 \times 7 = 42$ and", "42", F,
    "answered, then hit the token limit", finished=False)
add("truncated", r"The answer is 15. Let me double check this by recomputing the sum 1 + 2 + 3 + 4", "15", F,
    "hit the token limit mid-check", finished=False)

# --- near-miss numbers
for r, t, label, n in [
    (r"\boxed{41}", "42", F, "off by one"),
    (r"\boxed{42.0}", "42", T, "trailing .0"),
    (r"\boxed{-42}", "42", F, "sign"),
    (r"\boxed{0.33}", "\\frac{1}{3}", F, "rounded decimal"),
    (r"\boxed{0.3333}", "\\frac{1}{3}", F, "rounded decimal, 4 places"),
    (r"\boxed{1001}", "1000", F, "off by one"),
    (r"\boxed{100}", "1000", F, "order of magnitude"),
    (r"\boxed{3.14}", "\\pi", F, "approximation of pi"),
    (r"\boxed{2.5}", "\\frac{5}{2}", T, "decimal for fraction"),
    (r"\boxed{1/4}", "0.25", T, "slash fraction"),
    (r"\boxed{25}", "0.25", F, "percent-like slip"),
    (r"\boxed{12.50}", "12.5", T, "trailing zero"),
    (r"\boxed{1,001}", "1001", T, "thousands separator"),
    (r"\boxed{10001}", "1001", F, "extra digit"),
    (r"\boxed{\frac{2}{3}}", "\\frac{3}{2}", F, "reciprocal"),
    (r"\boxed{-\frac{1}{2}}", "-0.5", T, "negative fraction"),
    (r"\boxed{7}", "007", T, "AIME leading zeros"),
    (r"\boxed{017}", "17", T, "AIME leading zero in response"),
    (r"\boxed{1.5}", "1.05", F, "dropped zero"),
]:
  add("near_miss", r, t, label, n)

# --- multiple boxes
for r, t, label, n in [
    (r"First we get \boxed{12}. Checking again, the result is \boxed{12}.", "12", T, "same box twice"),
    (r"\boxed{3} ... after fixing a sign error, \boxed{5}", "5", F, "two different boxes"),
    (r"Part one gives \boxed{x = 2}. So the area is \boxed{8}.", "8", F, "intermediate result boxed"),
    (r"\boxed{\frac{1}{2}}, that is, \boxed{0.5}", "0.5", T, "same value, two forms"),
    ("The area is \\boxed{6}.\n\nFinal Answer: \\boxed{6}", "6", T, "repeat in final line"),
    (r"The solutions are \boxed{2} and \boxed{3}.", "2, 3", T, "all solutions listed"),
    (r"The solutions are \boxed{2} and \boxed{3}.", "2", F, "extra solution"),
    (r"\boxed{A} ... no, \boxed{B}", "B", F, "two choices boxed"),
    (r"\boxed{5}\boxed{5}\boxed{5}", "5", T, "repeated identical"),
    (r"\fbox{4} and hence \boxed{4}", "4", T, "fbox and boxed agree"),
    (r"\boxed{10} is wrong; the answer is \boxed{12}", "12", F, "boxed a wrong value too"),
    (r"The roots are \boxed{2} and \boxed{3}.", "3, 2", T, "roots in other order"),
]:
  add("multiple_boxes", r, t, label, n)

# --- hedges: more than one final answer
for r, t, label, n in [
    (r"The answer is \boxed{5} or \boxed{6}.", "6", F, "issue 15 defect"),
    (r"The answer is \boxed{5} or \boxed{6}.", "5", F, "issue 15 defect, other truth"),
    (r"\boxed{5 \text{ or } 6}", "5", F, "or inside one box"),
    ("Answer: 5 or 6", "6", F, "or in answer line"),
    ("The answer is 7.\n\nActually, the answer is 8.", "8", F, "two final statements"),
    ("Answer: 7\nAnswer: 8", "7", F, "two answer lines"),
    ("\\boxed{7}\nAnswer: 8", "8", F, "box and answer line disagree"),
    (r"The final answer is $12$. Hmm, or maybe the final answer is $13$.", "12", F, "restated differently"),
    (r"Either \boxed{3} or \boxed{4}, I can't decide.", "4", F, "either/or boxes"),
    (r"\boxed{3 \lor 4}", "3", F, "logical or"),
    (r"So $x = 3$ or $x = 5$, hence \boxed{3 \text{ or } 5}", "3, 5", T, "both roots: not a hedge"),
    (r"The answer is \boxed{2}, or equivalently \boxed{\frac{4}{2}}.", "2", T, "same value twice"),
    ("Final answer: 12. Wait, no.\nFinal answer: 15.", "15", F, "changed final answer"),
    (r"\boxed{\pm 2}", "2", F, "both signs for one root"),
    (r"\boxed{\pm 2}", "2, -2", T, "both signs, both roots"),
]:
  add("hedge", r, t, label, n)

# --- fractions, radicals, pi
for r, t, label, n in [
    (r"\boxed{\frac{\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", T, "unbraced sqrt in truth"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", "\\frac{\\sqrt{2}}{2}", T, "unrationalised"),
    (r"\boxed{2\sqrt{2}}", "\\sqrt{8}", T, "simplified radical"),
    (r"\boxed{\sqrt{8}}", "2\\sqrt{2}", T, "unsimplified radical"),
    (r"\boxed{2\sqrt{3}}", "3\\sqrt{2}", F, "swapped radical"),
    (r"\boxed{\pi}", "\\pi", T, "pi"),
    (r"\boxed{2\pi}", "\\pi", F, "double"),
    (r"\boxed{\frac{\pi}{2}}", "\\pi/2", T, "slash form"),
    (r"\boxed{9 \pi}", "9\\pi", T, "space"),
    (r"\boxed{28.27}", "9\\pi", F, "decimal approximation"),
    (r"\boxed{\dfrac{3}{4}}", "\\frac34", T, "dfrac vs short frac"),
    (r"\boxed{\tfrac{5}{8}}", "0.625", T, "tfrac vs decimal"),
    (r"\boxed{\frac{10}{4}}", "\\frac{5}{2}", T, "unreduced fraction"),
    (r"\boxed{\sqrt{2}+1}", "1+\\sqrt{2}", T, "commuted sum"),
    (r"\boxed{\sqrt{2}-1}", "1-\\sqrt{2}", F, "sign of difference"),
    (r"\boxed{\frac{1+\sqrt{5}}{2}}", "\\frac{1+\\sqrt5}2", T, "golden ratio, short forms"),
    (r"\boxed{\frac{3}{2}\pi}", "\\frac{3\\pi}{2}", T, "pi placement"),
    (r"\boxed{4-2\sqrt{3}}", "(\\sqrt{3}-1)^2", T, "expanded square"),
    (r"\boxed{e^2}", "e^{2}", T, "braces on exponent"),
    (r"\boxed{\sqrt[3]{2}}", "2^{1/3}", T, "cube root as power"),
    (r"\boxed{\frac{\sqrt{3}}{3}}", "\\frac{\\sqrt{3}}{2}", F, "wrong denominator"),
]:
  add("fraction_radical_pi", r, t, label, n)

# --- intervals and sets
for r, t, label, n in [
    (r"\boxed{(-\infty, 3)}", "(-\\infty,3)", T, "open ray"),
    (r"\boxed{(-\infty, 3]}", "(-\\infty,3)", F, "closed end"),
    (r"\boxed{[2, 5]}", "[2,5]", T, "closed interval"),
    (r"\boxed{\{1, 2, 3\}}", "\\{1,2,3\\}", T, "set"),
    (r"\boxed{\{3, 2, 1\}}", "\\{1,2,3\\}", T, "set in other order"),
    (r"\boxed{\{1, 2\}}", "\\{1,2,3\\}", F, "missing element"),
    (r"\boxed{(-\infty,-1) \cup (1,\infty)}", "(-\\infty,-1)\\cup(1,\\infty)", T, "union"),
    (r"\boxed{(-\infty,-1] \cup [1,\infty)}", "(-\\infty,-1)\\cup(1,\\infty)", F, "union, closed ends"),
    (r"\boxed{x \in [0, 1)}", "[0,1)", T, "membership form"),
    (r"\boxed{0 \le x < 1}", "[0,1)", T, "inequality form"),
    (r"\boxed{-2, 3}", "3, -2", T, "roots in other order"),
    (r"\boxed{[1, \infty)}", "(1,\\infty)", F, "closed vs open"),
    (r"\boxed{\left[ -1, 4 \right]}", "[-1,4]", T, "left/right"),
]:
  add("interval_set", r, t, label, n)

# --- tuples
for r, t, label, n in [
    (r"\boxed{(1, 2)}", "(1,2)", T, "pair"),
    (r"\boxed{(2, 1)}", "(1,2)", F, "swapped pair"),
    (r"\boxed{(3, -4)}", "(3,-4)", T, "negative entry"),
    (r"\boxed{\left(\frac{1}{2}, 3\right)}", "(0.5, 3)", T, "fraction entry"),
    (r"\boxed{(1, 2, 3)}", "(1,2,3)", T, "triple"),
    (r"\boxed{(1, 2, 4)}", "(1,2,3)", F, "wrong entry"),
    (r"The point is \boxed{(2,5)}.", "(2, 5)", T, "in a sentence"),
    (r"\boxed{(1, 2)}", "(1,2,3)", F, "missing entry"),
    (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", T, "vector"),
    (r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", F, "swapped vector"),
]:
  add("tuple", r, t, label, n)

# --- percent and units (MATH strips them; 12.5% is 12.5, not 0.125)
for r, t, label, n in [
    (r"\boxed{\frac{25}{2}\%}", "12.5\\%", T, "issue 15 defect"),
    (r"\boxed{12.5\%}", "12.5", T, "percent sign dropped"),
    (r"\boxed{12.5}", "12.5\\%", T, "percent in truth only"),
    (r"\boxed{0.125}", "12.5\\%", F, "fraction for percent: not MATH"),
    (r"\boxed{50\%}", "50", T, "percent"),
    (r"\boxed{5 \text{ cm}}", "5", T, "unit"),
    (r"\boxed{5\text{ cm}^2}", "5", T, "squared unit"),
    (r"\boxed{30^\circ}", "30", T, "degrees"),
    (r"\boxed{30^{\circ}}", "30^\\circ", T, "braced degrees"),
    (r"\boxed{\$18.90}", "18.90", T, "dollar sign"),
    (r"\boxed{18.9}", "\\$18.90", T, "dollar sign in truth"),
    (r"\boxed{1,000,000}", "1000000", T, "two separators"),
    (r"\boxed{1{,}000}", "1000", T, "braced separator"),
    (r"\boxed{1\,000}", "1000", T, "thin space"),
    (r"\boxed{8 \text{ inches}}", "8", T, "word unit"),
    (r"\boxed{8}", "8\\text{ inches}", T, "unit in truth"),
    (r"\boxed{80 \text{ cm}}", "8", F, "wrong value with unit"),
    (r"\boxed{45^\circ}", "135", F, "supplement"),
    (r"\boxed{\text{(C)}}", "\\text{(C)}", T, "choice letter"),
    (r"\boxed{\text{Monday}}", "\\text{Monday}", T, "word answer"),
    (r"\boxed{\text{Tuesday}}", "\\text{Monday}", F, "wrong word"),
    (r"The answer is 20 dollars.", "20", T, "plain-word unit"),
]:
  add("percent_units", r, t, label, n)

# --- Answer: lines and stated answers
for r, t, label, n in [
    ("Work: 6 * 7.\nAnswer: 42", "42", T, "answer line"),
    (r"**Answer:** $\frac{3}{4}$", "0.75", T, "markdown answer"),
    ("Final Answer: 17", "17", T, "final answer line"),
    ("Answer: 16", "17", F, "wrong answer line"),
    ("The answer is 12.", "12", T, "answer sentence"),
    (r"The final answer is $\frac{1}{2}$.", "\\frac12", T, "answer sentence, inline math"),
    ("Therefore, the answer is 100.", "1000", F, "wrong answer sentence"),
    ("ANSWER: -5", "-5", T, "upper case"),
    ("answer: 5\nSo that's it.", "5", T, "trailing chatter"),
    ("Final answer: x = 7", "7", T, "variable assignment"),
    ("12", "12", T, "bare number"),
    ("3 + 4 + 5 = 12", "12", T, "final equation"),
    (r"Answer: \boxed{4}", "4", T, "box in answer line"),
    ("Answer: 1/3", "\\frac{1}{3}", T, "slash fraction"),
    ("Answer: 2/3", "\\frac{1}{3}", F, "wrong fraction"),
]:
  add("answer_line", r, t, label, n)


# --- long chains of thought
def _steps(n, seed):
  rng = random.Random(seed)
  lines, total = [], 0
  for i in range(n):
    x = rng.randint(2, 99)
    lines.append(f"Step {i + 1}: add {x} to the running total {total} to get {total + x}.")
    total += x
  return "\n".join(lines), total


cot, total = _steps(40, 1)
add("long_cot", f"We add the numbers one at a time.\n{cot}\nSo the sum is \\boxed{{{total}}}.", str(total), T,
    "40 steps, boxed total")
add("long_cot", f"We add the numbers one at a time.\n{cot}\nSo the sum is \\boxed{{{total}}}.", str(total + 1), F,
    "40 steps, truth differs by one")
cot2, total2 = _steps(200, 2)
add("long_cot", f"{cot2}\nTherefore the answer is {total2}.", str(total2), T, "200 steps, answer sentence")
add("long_cot", f"{cot2}\n", str(total2), F, "200 steps, no concluding statement")
add("long_cot", f"{cot2}\nThe answer is \\boxed{{{total2 - 10}}}.", str(total2), F, "200 steps, wrong box")
add("long_cot", (
    "Let the three consecutive integers be $n-1$, $n$, $n+1$. Their product is $n^3 - n$.\n"
    "If $n = 4$ the product is 60; if $n = 5$ it is 120; if $n = 6$ it is 210.\n"
    "We need the product 210, so $n = 6$ and the integers are 5, 6, 7.\n"
    "Their sum is $5 + 6 + 7 = 18$.\n\nThe answer is $\\boxed{18}$."), "18", T, "trial values then box")
add("long_cot", (
    "Let the three consecutive integers be $n-1$, $n$, $n+1$. Their product is $n^3 - n$.\n"
    "If $n = 4$ the product is 60; if $n = 5$ it is 120; if $n = 6$ it is 210.\n"
    "We need the product 120, so $n = 5$ and the integers are 4, 5, 6.\n"
    "Their sum is $4 + 5 + 6 = 15$.\n\nThe answer is $\\boxed{15}$."), "18", F, "wrong trial chosen")
add("long_cot", (
    "The probability of two heads in three tosses is $\\binom{3}{2}/8 = 3/8$.\n"
    "The probability of three heads is $1/8$.\nSo at least two heads has probability $3/8 + 1/8 = 1/2$.\n"
    "Therefore the final answer is $\\boxed{\\frac{1}{2}}$."), "\\frac12", T, "probability, fractions in steps")
add("long_cot", (
    "We want $17 \\times 23$. Note $17 \\times 20 = 340$ and $17 \\times 3 = 51$.\n"
    "So $17 \\times 23 = 340 + 51 = 391$.\nLet me verify: $391 / 17 = 23$. Correct.\n\\boxed{391}\n\n"
    "Final answer: \\boxed{391}"), "391", T, "verified, boxed twice")
add("long_cot", (
    "We want $17 \\times 23$. Note $17 \\times 20 = 340$ and $17 \\times 3 = 51$.\n"
    "So $17 \\times 23 = 340 + 51 = 391$."), "391", T, "ends in an equation with the answer")
add("long_cot", (
    "Suppose the answer were 10. Then the perimeter would be 40, contradicting the given 48.\n"
    "Suppose it were 12. Then the perimeter is 48, as required.\n\\boxed{12}"), "12", T, "rejected trial then box")
add("long_cot", (
    "Suppose the side were 10. Then the perimeter would be 40, contradicting the given 48.\n"
    "Suppose it were 12. Then the perimeter is 48, as required. Let us also try 14, which gives 56."),
    "12", F, "ends on an explored value, no answer")


# --- adversarial inputs
def _filler(n, seed):
  rng = random.Random(seed)
  words = ["the", "sum", "of", "terms", "is", "then", "we", "check", "that", "value", "again", "and"]
  out, size = [], 0
  while size < n:
    w = rng.choice(words) if rng.random() < 0.8 else str(rng.randint(0, 999))
    out.append(w)
    size += len(w) + 1
  return " ".join(out)


big = "1" + "0" * 299 + "7"
for r, t, label, n in [
    (r"\boxed{9^{9^{9^{9}}}}", "1", F, "tower of powers vs 1"),
    (r"\boxed{9^{9^{9^{9}}}}", "9^{9^{9^{9}}}", T, "tower of powers, identical"),
    (r"\boxed{10^{100000}}", "1", F, "huge power"),
    (f"\\boxed{{{big}}}", big, T, "301-digit number, equal"),
    (f"\\boxed{{{big[:-1]}8}}", big, F, "301-digit number, last digit differs"),
    (r"\boxed{2^{10}}", "1024", T, "small power"),
    ("\\boxed{" + "{" * 3000 + "x" + "}" * 3000 + "}", "1", F, "deep braces"),
    (_filler(100_000, 3), "5", F, "100 KB prose, no answer"),
    (_filler(100_000, 4) + "\n\nThe answer is $\\boxed{5}$.", "5", T, "100 KB prose then box"),
    (_filler(50_000, 5) + " \\boxed{" + "{" * 50_000, "5", F, "100 KB with open deep box"),
    (r"\boxed{100!}", "100!", T, "factorial, identical"),
    (r"\boxed{1000000!}", "1", F, "huge factorial"),
    (r"\boxed{\frac{1}{0}}", "1", F, "division by zero"),
    ("\\boxed{7} " * 1000, "7", T, "1000 identical boxes"),
    ("Answer: \n" * 5000 + "Answer: 3", "3", T, "5000 empty answer lines then one"),
    ("\\boxed{" + "+".join(["1"] * 400) + "}", "400", T, "400-term sum"),
    (r"\boxed{\infty}", "\\infty", T, "infinity"),
    (r"\boxed{NaN}", "1", F, "NaN"),
    (r"\boxed{9^9^9^9}", "1", F, "unbraced tower"),
]:
  add("adversarial", r, t, label, n)

# --- added on review of the first grader version (realistic phrasings it could mishandle), labelled
# before running any grader on them
for family, r, t, label, n in [
    ("long_cot", "Let me check if the answer is 6: $6 \\cdot 3 = 18 \\ne 21$. Try 7: $7 \\cdot 3 = 21$.\n\\boxed{7}",
     "7", T, "'if the answer is 6' is a trial, not a statement"),
    ("long_cot", "Suppose the answer is 10. Then the perimeter is 40, not 48. So the answer is 12.", "12", T,
     "supposition then answer"),
    ("no_answer", "I wonder whether the answer is 3 or something larger; more work is needed.", "3", F,
     "wonders, never states"),
    ("multiple_boxes", "Answer: $2\\sqrt{2}$\n\n\\boxed{\\sqrt{8}}", "2\\sqrt{2}", T, "same answer, two forms"),
    ("hedge", "\\boxed{2\\sqrt{2}} or maybe \\boxed{3}", "2\\sqrt{2}", F, "radical or integer"),
    ("hedge", "The answer is 4. Hmm, no: the answer is 5.", "4", F, "first answer right, then changed"),
    ("answer_line", "So the final answer is 5.", "5", T, "final answer sentence"),
    ("answer_line", "The answer is $x=5$.", "5", T, "assignment in answer sentence"),
    ("percent_units", "\\boxed{20\\text{ dollars}}", "20", T, "text unit"),
    ("percent_units", "\\boxed{12 \\mbox{ cm}}", "12", T, "mbox unit"),
    ("fraction_radical_pi", "\\boxed{\\frac{3}{6}}", "\\frac12", T, "unreduced half"),
    ("adversarial", "\\boxed{2^{2^{2}}}", "16", T, "small tower"),
    ("adversarial", "\\boxed{3^{3^{3}}}", "7625597484987", T, "3^27"),
    ("adversarial", "\\boxed{10^{10^{10}}}", "10^{10^{10}}", T, "huge tower, identical"),
    ("adversarial", "\\boxed{2^{10^{100}}}", "2", F, "astronomical power vs 2"),
]:
  add(family, r, t, label, n)

if __name__ == "__main__":
  out = pathlib.Path(__file__).with_name("grading_cases.jsonl")
  out.write_text("".join(json.dumps(c) + "\n" for c in CASES))
  print(f"{len(CASES)} cases -> {out}")
