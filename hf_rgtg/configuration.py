"""Configuration of prefix reward models."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig


class PrefixRewardConfig(PreTrainedConfig):
    r"""
    Configuration of a [`PrefixRewardModel`]: a decoder (or encoder) backbone with a scalar reward head applied at
    every position, so that one forward pass scores every prefix of the input.

    The backbone's own configuration is kept whole as the sub-config `text_config`; everything else describes the
    head.

    Attributes:
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Configuration of the backbone, built with `AutoModel.from_config`. A `dict` needs a `model_type` key.
            Defaults to a default `LlamaConfig`.
        head_layer (`int`, *optional*):
            Which hidden state the head reads. `None` (the default) reads the backbone's final output (after its
            final norm), as `*ForSequenceClassification` models do. An integer indexes the backbone's
            `hidden_states` tuple (0 is the embeddings, `i` the output of layer `i`).
        head_hidden_size (`int`, *optional*):
            `None` (the default) makes the head a single linear map to a scalar. An integer makes it a small MLP
            (linear, GELU, linear) with that hidden width.
        head_bias (`bool`, *optional*, defaults to `False`):
            Whether the head's output layer has a bias. Decoder reward models saved as
            `*ForSequenceClassification` have none.
        base_model_name_or_path (`str`, *optional*):
            Where the backbone came from, recorded for model cards and for checking that a reward model was trained
            on a given language model's backbone.
        training_summary (`dict`, *optional*):
            What the model was trained on and how (`datasets`, `num_pairs`, `settings`, `prefix_accuracy`,
            `prefix_counts`, `mean_margin`, `description`), filled in by `PrefixRewardTrainer` and rendered into
            the model card by `save_pretrained`.

    Examples:

    ```python
    >>> from transformers import GPT2Config
    >>> from hf_rgtg import PrefixRewardConfig, PrefixRewardModel

    >>> config = PrefixRewardConfig(text_config=GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128))
    >>> model = PrefixRewardModel(config)
    >>> model.config.text_config.model_type
    'gpt2'
    ```
    """

    model_type = "prefix_reward"
    # The plain `sub_configs` mapping (not 5.20's `sub_configs_defaults`), with the dict-to-config step done in
    # `__post_init__`, works on every supported transformers.
    sub_configs = {"text_config": AutoConfig}

    text_config: dict | PreTrainedConfig | None = None
    head_layer: int | None = None
    head_hidden_size: int | None = None
    head_bias: bool = False
    base_model_name_or_path: str | None = None
    training_summary: dict | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.text_config, dict):
            text_config = dict(self.text_config)
            self.text_config = AutoConfig.for_model(text_config.pop("model_type", "llama"), **text_config)
        elif self.text_config is None:
            self.text_config = AutoConfig.for_model("llama")
        super().__post_init__(**kwargs)
        if self.text_config.is_encoder_decoder:
            raise ValueError(
                f"`text_config` is an encoder-decoder configuration (model_type={self.text_config.model_type!r}). "
                "A prefix reward model needs a decoder-only backbone (GPT-2, Llama, Qwen2, ...) or, without "
                "incremental scoring, an encoder-only one (BERT, DeBERTa, ...). Use such a checkpoint instead."
            )
        if self.head_hidden_size is not None and self.head_hidden_size < 1:
            raise ValueError(
                f"`head_hidden_size` (={self.head_hidden_size}) has to be a positive integer, or `None` for a "
                "linear head."
            )
        num_layers = getattr(self.text_config, "num_hidden_layers", None)
        if (
            self.head_layer is not None
            and num_layers is not None
            and not -num_layers - 1 <= self.head_layer <= num_layers
        ):
            raise ValueError(
                f"`head_layer` (={self.head_layer}) is out of range for a backbone with {num_layers} layers: use "
                f"an index in [{-num_layers - 1}, {num_layers}], or `None` for the final output."
            )


# Saved prefix reward models then load through `AutoConfig` (and so `AutoModelForPrefixReward`) without
# `trust_remote_code`. Every module that reads a prefix reward model's configuration imports this one.
AutoConfig.register(PrefixRewardConfig.model_type, PrefixRewardConfig, exist_ok=True)

__all__ = ["PrefixRewardConfig"]
