"""Robust checkpoints: files (save / read / load), tags, sharing (publish, hub cache, shipped tags), converters.

``from timm_lipschitz.hub import save_pretrained, load_robustness, make_tag, ...`` keeps working: every name of the
former single module is re-exported here.
"""
from .convert import CONVERTER_SOURCES, convert_checkpoint
from .files import (CONFIG_NAME, FORMAT_VERSION, WEIGHTS_NAME, CheckpointError, load_checkpoint, read_config,
                    read_metadata, recipe_hash, record_evaluation, save_pretrained)
from .publish import place_in_cache, publish, ship_pretrained
from .sources import ModelSource, load_model, load_pretrained, load_robustness, resolve
from .tags import DATASET_TAGS, ParsedTag, TagError, make_tag, parse_tag

__all__ = ['save_pretrained', 'read_metadata', 'load_robustness', 'load_checkpoint', 'load_pretrained',
           'publish', 'place_in_cache', 'ship_pretrained', 'convert_checkpoint', 'make_tag', 'parse_tag',
           'recipe_hash', 'CheckpointError', 'TagError', 'ParsedTag', 'WEIGHTS_NAME', 'FORMAT_VERSION',
           'DATASET_TAGS', 'CONVERTER_SOURCES', 'record_evaluation', 'read_config', 'CONFIG_NAME', 'ModelSource',
           'resolve', 'load_model']
