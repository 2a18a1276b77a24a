"""Synthetic verifiable code task: the framework's embedded default dataset.

Small templated Python function-writing problems, generated from a seed, whose natural-language
instruction maps deterministically to the code, so that a tiny model can learn the task in a few
CPU minutes and be scored on held-out problems by running tests (pass@1).

Grammar. Every problem asks for a function ``f`` built from a few primitives (constants are small
integers or two-letter strings):

  ``int``   ``f(x)``: a chain of 1–3 integer operations (add / subtract / multiply by k,
            floor-divide by k, remainder modulo k, square, negate, absolute value).
            "Write a function `f(x)` that takes an integer x, multiplies it by 3, then adds 2,
            and returns the result." → ``x = x * 3`` / ``return x + 2``.
  ``pair``  ``f(a, b)``: sum / difference / product / larger / smaller of a and b, then 0–2
            integer operations.
  ``cond``  ``f(x)``: "returns <branch> if x <condition>, otherwise <branch>" with conditions
            even, odd, positive, negative, greater / less than k, at least / at most k,
            divisible by k, and branches x, x plus / minus / times k, x squared, the negation.
  ``list``  ``f(xs)``: 0–2 filter / map steps (keep the even / odd elements, the elements
            greater / less than k, remove those equal to k; multiply each by k, add k to each,
            square each), then a final step (sum, count, largest, smallest, reverse order,
            sorted, or the list itself).
  ``str``   ``f(s)``: a chain of 1–3 string operations (upper / lower case, reverse, repeat k
            times, append / prepend a string, keep / drop the first k characters, replace one
            letter by another, and — last only — the length).

``difficulty`` is the number of primitives (``cond``: the condition plus each branch that is not
plain ``x``), 1–3.

Solutions. The correct candidates of a problem are the canonical code and its equivalent surface
variants (chains: step-by-step assignments, a ``result`` accumulator, one nested expression;
conditionals: guard clause, if/else, conditional expression). The incorrect candidates are
mutants of the problem's specification (a constant off by one, a wrong operator or predicate,
a missing step, two steps swapped, swapped branches), each rendered in a random surface style.
The tests are five ``assert f(...) == ...`` lines on inputs picked from random ones to tell apart
as many single-edit mutations of the specification as possible; their expected values come from
running the canonical solution. Degenerate specifications (``f`` constant, or a primitive that
does not matter, e.g. "multiplies each element by 2, and returns their count") are rejected.
Every candidate is then labelled by running it against the tests in the sandbox
(``wmtp_jax.sandbox``): a mutant that passes (e.g. two commuting steps swapped) is a correct
solution; a canonical solution that fails is a generator bug and raises.

Ground truth. Every record carries character spans of its ``output`` (``[[start, end], ...]``:
sorted, disjoint; ``wmtp_jax.data.schema``), computed while rendering: ``render`` builds the
code from lexical units (identifiers, keywords, numbers, runs of whitespace and punctuation of
the surface style, and the critical units that each primitive's template marks in
``grammar.PRIMS``), and the spans are read off the units.

  ``critical``  the characters that encode the specification: the constants (``3``, the letters
                of ``"ab"``), operators (``+``, ``//``, ``**`` with its ``2``, unary ``-``, the
                slices ``[::-1]``, ``[:k]``, ``[k:]``), function and method names (``abs``,
                ``max``, ``len``, ``sorted``, ``upper``, ``replace``), predicates (the operators
                and constants of a condition or a filter: ``% 2 == 0``, ``> 3``, ``!=``), the
                ``x`` of a branch that returns x unchanged, and the delimiters that fix what a
                step applies to: the parentheses of a function call (``abs(…)``, not of a method
                call) and of a parenthesised operand (``(x + 7) * 2``), and the brackets of a
                list comprehension. The rest is the surface style: identifiers (``f``, ``x``,
                ``result``, ``v``), keywords, whitespace and the other punctuation (the
                signature's and methods' parentheses, quotes, ``:``, ``,``, ``.``, the ``=`` of
                an assignment); a chain step without text of its own ("returns them") has no
                critical character. So the order of steps is marked both by where the steps'
                critical units stand (in application order in ``steps`` and ``result``) and by
                the delimiters (``nested``: ``-(x + 7)`` vs ``(-x) + 7``); a branch by its
                position (then before else). Swapping two steps (with text of their own) or the
                branches changes the sequence of critical texts.
  ``mutated``   where a candidate departs from the specification, i.e. from the nearest correct
                rendering: the specification rendered in the candidate's surface style (where
                several styles render the candidate as the same text, e.g. a one-step chain, the
                nearest of them). The spans cover the candidate's units that a best alignment of
                the two unit sequences leaves unmatched (the most units matched, then the fewest
                edit regions; this also defines "nearest"), and, where the correct rendering has
                text with nothing in its place (a missing step, a dropped ``abs(…)``), the unit
                that text was attached to: the non-whitespace unit just before the gap, else the
                next one on its line, else the last one before it (``render.mutated_spans``).
                Never empty on an incorrect record; ``[]`` on every record labelled correct (a
                mutant that passes the tests included).

The data template turns them into token masks aligned with the labels (``critical_mask``,
``mutated_mask``: ``wmtp_jax.data.template``).

Splits. A problem is identified by its specification key (family, primitives in order, their
constants), e.g. ``int:mul=3,add=2``; the instruction text is a function of the key and vice
versa. Each key belongs to exactly one split, chosen by a salted SHA-256 hash of the key that does
not depend on the seed (80 % train, 10 % valid, 10 % test), so held-out problems are unseen
combinations of the same primitives and constants — for every seed, in every split size. A fourth
set, ``pretrain`` (``PRETRAIN``), feeds the tiny bases' pre-training corpus (``corpus``): keys that
hash to train but are not among a given dataset's train problems, so a base never sees a problem
of the dataset it is fine-tuned on, while the three splits stay as they are.

Files: ``write_dataset`` writes the dataset directory described in ``wmtp_jax.data`` plus
``synthetic.json`` (the generation parameters; written last, so it marks a complete dataset),
which ``ensure_dataset`` compares to reuse a dataset directory; ``cached_dataset`` keeps one
directory per parameters in the cache (``cached_path``: ``<cache root>/synthetic-<label>-
<hash8>``, built atomically once, never modified). Output is byte-identical for the same
parameters. CLI: ``python -m wmtp_jax.data.synthetic --out DIR [--seed 0] [--n-train N]``.

Modules: ``grammar`` (primitives, families, specifications, sampling, mutations), ``render``
(source code in each surface style, instruction text), ``problems`` (splits, tests,
``generate_problems``), ``label`` (sandboxed labelling), ``dataset`` (files, cache, CLI),
``corpus`` (the pre-training corpus of the tiny bases: code and instructions in separate
documents, so that a base learns the language but not the instruction→solution mapping).
"""

from wmtp_jax.data.synthetic.dataset import (DEFAULT_SIZES, DEFAULT_VOCAB_SIZE, GENERATOR_VERSION,
                                             PARAMS_FILE, TOKENIZER_DIR, cached_dataset,
                                             cached_path, ensure_dataset, main, write_dataset)
from wmtp_jax.data.synthetic.grammar import ENTRY_POINT
from wmtp_jax.data.synthetic.label import label_candidates
from wmtp_jax.data.synthetic.problems import (PRETRAIN, SOURCE, SPLITS, Problem, generate_problems,
                                              split_of)
