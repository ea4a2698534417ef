"""torch.hub entry points: ``torch.hub.load("<repo or local dir>", "cifar_resnet20", pretrained=False)``.

Each registered architecture is an entry; ``pretrained=True`` loads its default pretrained tag (or pass the
full ``tag=...``). Models come from timm's registry, so all timm keyword arguments work.
"""
dependencies = ['torch', 'timm', 'safetensors']

import timm as _timm  # noqa: E402

import timm_lipschitz as _tl  # noqa: E402  (registers the models)


def _entry(arch: str):
    def load(pretrained: bool = False, tag: str = '', **kwargs):
        tags = [n.split('.', 1)[1] for n in _timm.list_pretrained(f'{arch}.*') if '.' in n and not n.endswith('.')]
        tag = tag[len(arch) + 1:] if tag.startswith(f'{arch}.') else tag  # the full name works too
        if pretrained and not tag:
            raise ValueError(f'{arch} has no default weights; pass tag=... (one of {tags}).')
        if tag and tag not in tags:
            raise ValueError(f'{arch} has no pretrained tag {tag!r}; tag= accepts {tags}.')
        name = f'{arch}.{tag}' if tag else arch
        return _timm.create_model(name, pretrained=pretrained, **kwargs)
    load.__name__ = arch
    load.__doc__ = f'{arch} from timm-lipschitz (timm.create_model("{arch}", ...)).'
    return load


for _arch in _tl.list_registered():
    globals()[_arch] = _entry(_arch)
