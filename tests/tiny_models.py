"""Real transformers architectures at toy sizes, built from configurations (never downloaded)."""

import transformers

transformers.logging.set_verbosity_error()


def llama():
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=1000, max_position_embeddings=128))


def t5():
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        d_model=64, d_ff=128, num_layers=2, num_heads=4, d_kv=16, vocab_size=1000))


def vit():
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, num_labels=10))


def mixtral(experts_implementation: str = "eager"):
    """Mixtral-style MoE with 3-D expert tensors (experts × out × in). ``eager`` routes tokens with
    data-dependent shapes (a Python loop over the experts that received tokens); ``grouped_mm`` (transformers'
    default) sorts the token-expert pairs and multiplies them in one grouped matmul, shapes fixed by the batch."""
    return transformers.MixtralForCausalLM(transformers.MixtralConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=1000, max_position_embeddings=128,
        experts_implementation=experts_implementation))


def mixtral_grouped():
    return mixtral("grouped_mm")


def resnet():
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        depths=[1, 1], hidden_sizes=[16, 32], embedding_size=16, layer_type="basic", num_labels=10))


MODELS = {"llama": llama, "t5": t5, "vit": vit, "mixtral": mixtral, "resnet": resnet}
#: models whose forward and backward trace under fake tensors (eager MoE routing does not)
TRACEABLE = {"llama": llama, "t5": t5, "vit": vit, "mixtral-grouped": mixtral_grouped, "resnet": resnet}
