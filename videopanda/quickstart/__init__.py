"""The quickstart: the Video-Panda recipe on the synthetic benchmark, on CPU.

`run` drives it (`videopanda quickstart`: data, base models, the three training stages, evaluation, report);
`models` makes its tokenizer, tiny base Llama and random teacher for a data folder (`videopanda
quickstart-models`). The data itself is `videopanda.data.synth`'s.
"""
