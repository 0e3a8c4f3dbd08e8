"""Every public docstring carries a runnable example; run them."""

import doctest
import importlib
import re

import pytest

MODULES = [
    "hf_rgtg.auto",
    "hf_rgtg.backbones",
    "hf_rgtg.compat",
    "hf_rgtg.configuration",
    "hf_rgtg.custom_generate",
    "hf_rgtg.data",
    "hf_rgtg.evaluation",
    "hf_rgtg.defaults",
    "hf_rgtg.generation",
    "hf_rgtg.hub",
    "hf_rgtg.incremental.buffer",
    "hf_rgtg.incremental.decoder",
    "hf_rgtg.incremental.gpt2",
    "hf_rgtg.incremental.llama",
    "hf_rgtg.integrations.vllm.core",
    "hf_rgtg.integrations.vllm.settings",
    "hf_rgtg.modeling",
    "hf_rgtg.pipelines",
    "hf_rgtg.processing",
    "hf_rgtg.redistribution",
    "hf_rgtg.scoring",
    "hf_rgtg.scoring.base",
    "hf_rgtg.scoring.reference",
    "hf_rgtg.scoring.vocab",
    "hf_rgtg.scorer_set",
    "hf_rgtg.stopping",
    "hf_rgtg.tokenization",
    "hf_rgtg.trace",
    "hf_rgtg.tracking",
    "hf_rgtg.training",
    "hf_rgtg.validation",
    "hf_rgtg.visualization",
]


class FencedParser(doctest.DocTestParser):
    """Examples sit in Markdown code fences, as in transformers; a closing fence ends the expected output."""

    def parse(self, string, name="<string>"):
        return super().parse(re.sub(r"^\s*```\w*\s*$", "", string, flags=re.MULTILINE), name)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(parser=FencedParser())
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module) if t.examples]
    assert tests, f"no examples found in {name}"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
