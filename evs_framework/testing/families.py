"""Tiny random-weight checkpoints of the newer families, in the diffusers layouts their downloads have: an SDXL
folder (two CLIP text encoders, a text-time UNet, a VAE with SDXL's scaling) and a Wan 2.1 folder (a
WanTransformer3DModel, an AutoencoderKLWan with its real 8x spatial and 4x temporal compression, a UMT5 encoder
and a fast tokenizer). Outputs are noise-like; the files load through the same code as the real ones."""

from __future__ import annotations

from pathlib import Path

import torch

from evs_framework.loaders.sd_layout import save_clip_tokenizer

SDXL_FOLDER = "stable-diffusion-xl-base-1.0"
WAN_FOLDER = "Wan2.1-T2V-1.3B-Diffusers"
SDXL_TEXT_DIMS = (16, 16)  # the two encoders' widths; the UNet's cross-attention sees both side by side
WAN_TEXT_DIM = 32


def write_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    for index, (name, model_class) in enumerate((("text_encoder", CLIPTextModel),
                                                 ("text_encoder_2", CLIPTextModelWithProjection))):
        tokenizer = save_clip_tokenizer(folder / ("tokenizer" if index == 0 else "tokenizer_2"))
        config = CLIPTextConfig(hidden_size=SDXL_TEXT_DIMS[index], intermediate_size=24, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=77, vocab_size=len(tokenizer),
                                projection_dim=SDXL_TEXT_DIMS[index], bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        model_class(config).save_pretrained(folder / name)
    time_dim = 8
    UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1), norm_num_groups=8,
        cross_attention_dim=sum(SDXL_TEXT_DIMS), addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + SDXL_TEXT_DIMS[1],
    ).save_pretrained(folder / "unet")
    AutoencoderKL(  # 4 blocks: SDXL's factor of 8
        in_channels=3, out_channels=3, block_out_channels=(8, 8, 16, 16), norm_num_groups=8, latent_channels=4,
        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.13025, sample_size=64, force_upcast=True,
    ).save_pretrained(folder / "vae")
    return folder


def save_word_tokenizer(folder: Path, words: list[str]):
    """A fast word-level tokenizer (unknown words map to <unk>), saved as tokenizer.json, as T5 tokenizers are."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<pad>", "</s>", "<unk>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def write_tiny_wan(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = save_word_tokenizer(folder / "tokenizer", "a red blue ball cat dog car moving slowly fast".split())
    UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=WAN_TEXT_DIM, d_kv=8, d_ff=64, num_layers=2,
                                num_heads=4, relative_attention_num_buckets=8)).save_pretrained(folder / "text_encoder")
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=WAN_TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).save_pretrained(folder / "transformer")
    AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True]).save_pretrained(folder / "vae")
    return folder
