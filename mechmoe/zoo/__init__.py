"""The model zoo: models mechmoe makes itself.

Named model sources (``tiny:FAMILY`` random models in :mod:`mechmoe.zoo.tiny`, SmolLM2 in
:mod:`mechmoe.zoo.smollm2`, found through the ``mechmoe.sources`` entry points) and the
pre-trained miniature pair (:mod:`~mechmoe.zoo.corpus`, :mod:`~mechmoe.zoo.tokenizers`,
:mod:`~mechmoe.zoo.pretrain`). It uses only the probes and the model layers below it;
the demo that studies the miniatures is in :mod:`mechmoe.study`.
"""
