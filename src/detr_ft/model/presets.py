"""Tiny presets: transformers configs of each family, small enough to train on 2 CPU cores.

Random init, built offline from configs. Each factory takes the number of classes and
returns the family's transformers config; ``model/families.py`` pairs it with the
family's preset name and default resize.
"""

from __future__ import annotations


def tiny_resnet(hidden_sizes=(32, 64, 128, 256), out_features=("stage4",)):
    """A basic-block transformers ResNet (no timm), one block per stage."""
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=32, hidden_sizes=list(hidden_sizes), depths=[1, 1, 1, 1],
                        layer_type="basic", out_features=list(out_features))


def detr_tiny(num_labels: int):
    from transformers import DetrConfig

    return DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=tiny_resnet(),
        d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=20, dropout=0.0, auxiliary_loss=True,
        num_labels=num_labels,
    )


def conditional_detr_tiny(num_labels: int):
    """Conditional DETR (sigmoid focal loss, conditional cross-attention) on stride-8 features."""
    from transformers import ConditionalDetrConfig

    return ConditionalDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=tiny_resnet((32, 64, 128, 256), out_features=("stage2",)),
        d_model=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=30, dropout=0.0, auxiliary_loss=True,
        num_labels=num_labels,
    )


def deformable_detr_tiny(num_labels: int):
    """Deformable DETR on three ResNet stages (strides 8, 16, 32), PyTorch multi-scale deformable
    attention (no custom kernels), no box refinement, single stage."""
    from transformers import DeformableDetrConfig

    return DeformableDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None,
        backbone_config=tiny_resnet(out_features=("stage2", "stage3", "stage4")), num_feature_levels=3,
        d_model=128, encoder_layers=1, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=30, dropout=0.0, auxiliary_loss=True,
        disable_custom_kernels=True, num_labels=num_labels,
    )


def dab_detr_tiny(num_labels: int):
    """DAB-DETR (dynamic anchor boxes as queries) on stride-32 features, auxiliary losses on."""
    from transformers import DabDetrConfig

    return DabDetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone=None, backbone_config=tiny_resnet(),
        hidden_size=128, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=30, dropout=0.0, auxiliary_loss=True,
        num_labels=num_labels,
    )


def _rtdetr_line_kwargs(num_labels: int) -> dict:
    """What the RT-DETR line (RT-DETR, RT-DETRv2, D-FINE) shares in its tiny presets: a basic-block
    RT-DETR ResNet (strides 8, 16, 32), a 1-layer hybrid encoder, 3 decoder layers, 30 queries,
    trainable batch norms (random init) and 10 denoising queries (on the demo's data they learned
    faster per CPU-second than 30)."""
    from transformers import RTDetrResNetConfig

    channels = [32, 64, 128, 192]
    backbone = RTDetrResNetConfig(embedding_size=32, hidden_sizes=channels, depths=[1, 1, 1, 1], layer_type="basic",
                                  out_features=["stage2", "stage3", "stage4"])
    return dict(
        backbone_config=backbone, use_pretrained_backbone=False, freeze_backbone_batch_norms=False,
        encoder_in_channels=channels[1:], feat_strides=[8, 16, 32],
        encoder_hidden_dim=128, encoder_layers=1, encoder_ffn_dim=256, encoder_attention_heads=4,
        d_model=128, decoder_in_channels=[128, 128, 128], decoder_layers=3, decoder_ffn_dim=256,
        decoder_attention_heads=4, num_queries=30, num_denoising=10, num_labels=num_labels,
    )


def rtdetr_tiny(num_labels: int):
    """RT-DETR with PyTorch deformable attention (no custom kernels)."""
    from transformers import RTDetrConfig

    return RTDetrConfig(disable_custom_kernels=True, **_rtdetr_line_kwargs(num_labels))


def rtdetr_v2_tiny(num_labels: int):
    """RT-DETRv2 (discrete-sampling-capable deformable attention, PyTorch implementation)."""
    from transformers import RTDetrV2Config

    return RTDetrV2Config(disable_custom_kernels=True, **_rtdetr_line_kwargs(num_labels))


def dfine_tiny(num_labels: int):
    """D-FINE (fine-grained distribution refinement of the boxes) on the RT-DETR line's tiny ResNet, its
    hybrid encoder's fusion blocks scaled as D-FINE-N's (``hidden_expansion`` 0.34, ``depth_mult`` 0.5):
    on 2 CPU cores the demo then steps 1.2x faster and reaches mAP50 0.960-0.967 in 6 minutes (five
    runs) instead of 0.948-0.958 (README, "The demo learns")."""
    from transformers import DFineConfig

    return DFineConfig(hidden_expansion=0.34, depth_mult=0.5, **_rtdetr_line_kwargs(num_labels))


def deimv2_tiny(num_labels: int):
    """DEIMv2 (dense one-to-one matching, matching-aware loss) on the RT-DETR line's tiny ResNet."""
    from transformers import Deimv2Config

    return Deimv2Config(**_rtdetr_line_kwargs(num_labels))


def _group_detr_kwargs(num_labels: int) -> dict:
    """What LW-DETR and RF-DETR share in their tiny presets: a 128-wide projector and decoder of 3 layers,
    20 queries (at most the 64 encoder tokens of a 128 x 128 image at stride 16), 3 Group-DETR query
    groups in training (the originals: 13), one C2F block, no dropout."""
    return dict(d_model=128, decoder_layers=3, decoder_self_attention_heads=4, decoder_cross_attention_heads=4,
                decoder_ffn_dim=256, num_queries=20, group_detr=3, c2f_num_blocks=1, dropout=0.0,
                num_labels=num_labels)


def lwdetr_tiny(num_labels: int):
    """LW-DETR: a 4-layer ViT (patch 16, 2 x 2 windows in layers 1 and 3, global attention in 2 and 4)
    whose layers 2 and 4 feed one projector level at stride 16.

    ``projector_scale_factors`` is given: transformers 5.18's ``LwDetrConfig()`` default leaves it
    empty, and then the forward has no feature level (``torch.cat(): expected a non-empty list``)."""
    from transformers import LwDetrConfig, LwDetrViTConfig

    backbone = LwDetrViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                               image_size=128, pretrain_image_size=128, patch_size=16, num_windows=4,
                               window_block_indices=[0, 2], out_indices=[2, 4])
    return LwDetrConfig(backbone_config=backbone, projector_scale_factors=[1.0], **_group_detr_kwargs(num_labels))


def rfdetr_tiny(num_labels: int):
    """RF-DETR: a 4-layer DINOv2 ViT (patch 16, 2 x 2 windows; transformers windows the layers whose
    0-based index is no output index: layers 1, 2 and 4 attend within windows, layer 3 globally) whose
    layers 2 and 4 feed one projector level at stride 16."""
    from transformers import RfDetrConfig, RfDetrDinov2Config

    backbone = RfDetrDinov2Config(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
                                  image_size=128, patch_size=16, num_windows=2, out_features=["stage2", "stage4"])
    return RfDetrConfig(backbone_config=backbone, **_group_detr_kwargs(num_labels))
