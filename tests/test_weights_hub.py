"""Weights by name (detres.modeling.weights.hub, detres.utils.download) against a loopback
HTTP server and file:// URLs serving small zoo-shaped files: names to URLs, one download into
torch's hub cache, hash checks, cut-off downloads, no network, conversion on the fly."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from detres.config import load_config
from detres.modeling import build_backbone, build_detector, load_pretrained, load_weights
from detres.modeling.weights import WeightsError, hub, weights_from_dict
from detres.modeling.weights.hub import cache_dir, locate, resolve_weights
from detres.modeling.weights.torchvision import torchvision_frcnn_checkpoint
from detres.modeling.weights.zoo import detectron2_checkpoint, msra_checkpoint
from detres.utils.download import hash_from_name

GOLD = Path(__file__).parent / "goldens" / "detectron2"
WIDTH = ["model.backbone.width_per_group=8"]
D2_FPN = "COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"


class Server:
    """A folder served on 127.0.0.1; ``/cut/<file>`` announces the whole file but sends half
    and closes; ``hits`` counts the requests per path."""

    def __init__(self, root: Path) -> None:
        self.root, self.hits = root, {}
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path.startswith("/cut/"):
                    data = (root / self.path[len("/cut/"):]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    s = Server(tmp_path / "www")
    s.root.mkdir()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def r18_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_backbone(load_config("imagenet_resnet18.yaml", WIDTH).model.backbone,
                          num_classes=1000).state_dict()


def cls_cfg(weights: str):  # noqa: ANN201
    return load_config("imagenet_resnet18.yaml", [*WIDTH, f"model.weights='{weights}'"])


def serve_with_hash(server: Server, state: dict[str, torch.Tensor], stem: str) -> str:
    tmp = server.root / "tmp.pth"
    torch.save(state, tmp)
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    name = f"{stem}-{sha}.pth"
    tmp.rename(server.root / name)
    return name


def test_torchvision_names_are_torchvision_urls_in_torch_hub_cache(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    r18 = ResNet18_Weights.IMAGENET1K_V1
    for spec, w in [("torchvision://resnet50", ResNet50_Weights.DEFAULT),
                    ("torchvision://ResNet18_Weights.IMAGENET1K_V1", r18),
                    ("ResNet50_Weights.IMAGENET1K_V2", ResNet50_Weights.IMAGENET1K_V2)]:
        url, dst, sha, kind = locate(spec)
        assert url == w.url and kind == type(w).__name__
        assert dst == tmp_path / "hub" / "checkpoints" / w.url.rsplit("/", 1)[-1]
        assert sha is not None and sha == hash_from_name(w.url) and len(sha) >= 8
    url, dst, sha, _ = locate("detectron2://ImageNetPretrained/MSRA/R-101.pkl")
    assert url == "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-101.pkl"
    assert dst == cache_dir() / "detectron2" / "ImageNetPretrained" / "MSRA" / "R-101.pkl"
    assert sha is None
    with pytest.raises(WeightsError, match="not a torchvision model or weight name"):
        locate("torchvision://resnet51")


def test_url_downloads_once_checks_hash_and_loads(server: Server) -> None:
    state = r18_state()
    name = serve_with_hash(server, state, "r18")
    cfg = cls_cfg(f"{server.url}/{name}")
    for _ in range(2):
        net = build_backbone(cfg.model.backbone, num_classes=1000)
        load_pretrained(net, cfg.model)
        assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert server.hits == {f"/{name}": 1}  # the second run reads the cache
    assert (cache_dir() / name).is_file()
    # a file:// URL and the cached path itself give the same file
    assert resolve_weights((server.root / name).as_uri(), cfg.model) == str(cache_dir() / name)


def test_hash_mismatch_keeps_nothing(server: Server) -> None:
    torch.save(r18_state(), server.root / "resnet18-f37072fd.pth")  # not torchvision's bytes
    cfg = cls_cfg(f"{server.url}/resnet18-f37072fd.pth")
    with pytest.raises(WeightsError, match="does not start with the published 'f37072fd'"):
        load_pretrained(build_backbone(cfg.model.backbone, num_classes=1000), cfg.model)
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


def test_torchvision_name_through_a_mirror_checks_torchvision_hash(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A torchvision name is fetched from $DETRES_TORCHVISION_URL and checked against the hash
    in torchvision's own file name (this file is not torchvision's, so it is refused)."""
    monkeypatch.setenv("DETRES_TORCHVISION_URL", server.url)
    fname = ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    torch.save(r18_state(), server.root / fname)
    with pytest.raises(WeightsError, match="SHA-256"):
        resolve_weights("torchvision://resnet18", cls_cfg("").model, progress=False)
    assert server.hits == {f"/{fname}": 1}


def test_cut_off_download_is_never_used(server: Server, tmp_path: Path) -> None:
    name = serve_with_hash(server, r18_state(), "r18")
    plain = "r18.pth"
    (server.root / plain).write_bytes((server.root / name).read_bytes())
    for url in (f"{server.url}/cut/{name}", f"{server.url}/cut/{plain}"):
        with pytest.raises(WeightsError, match="broke off"):
            resolve_weights(url, cls_cfg("").model, progress=False)
    assert not cache_dir().exists() or not any(cache_dir().iterdir())
    # why detres has its own downloader: torch.hub keeps such a file when no hash is given
    dst = tmp_path / "torch_hub_copy.pth"
    torch.hub.download_url_to_file(f"{server.url}/cut/{plain}", str(dst), progress=False)
    assert dst.stat().st_size < (server.root / plain).stat().st_size


def test_no_network_is_one_line_naming_url_and_place(server: Server) -> None:
    url = "http://127.0.0.1:9/detectron2/R-50.pkl"  # port 9 (discard): nothing listens
    with pytest.raises(WeightsError) as e:
        resolve_weights(url, cls_cfg("").model, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and url in msg
    assert f"put it at {cache_dir() / 'R-50.pkl'}" in msg


def test_msra_resnet_by_detectron2_name_converts_once(server: Server,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """coco_r101_msra.yaml's own spelling: MSRA's R-101 from Detectron2's path, converted
    beside the download and loaded into the detector's trunk."""
    width = json.loads((GOLD / "golden.json").read_text())["width"]
    monkeypatch.setenv("DETRES_DETECTRON2_URL", server.url + "/d2")
    dst = server.root / "d2" / "ImageNetPretrained" / "MSRA"
    dst.mkdir(parents=True)
    (dst / "R-101.pkl").write_bytes((GOLD / "msra_R-101.pkl").read_bytes())
    small = [f"model.backbone.width_per_group={width}"]
    cfg = load_config("coco_r101_msra.yaml", small)
    assert cfg.model.backbone.weights == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    model = build_detector(cfg)
    load_pretrained(model, cfg.model)
    ref = build_detector(cfg)
    load_weights(ref, weights_from_dict(msra_checkpoint(GOLD / "msra_R-101.pkl", cfg),
                                        source="msra"), policy="trunk")
    trunk = set(model.trunk_keys.values())
    got, want = model.state_dict(), ref.state_dict()
    assert trunk and all(torch.equal(got[k], want[k]) for k in trunk)
    cached = sorted(p.name for p in (cache_dir() / "detectron2/ImageNetPretrained/MSRA").iterdir())
    assert cached[0] == "R-101.detres-" + cached[0].split("-", 2)[2] and cached[1] == "R-101.pkl"
    load_pretrained(build_detector(cfg), cfg.model)
    assert server.hits == {"/d2/ImageNetPretrained/MSRA/R-101.pkl": 1}


def test_detectron2_zoo_detector_by_name(server: Server, monkeypatch: pytest.MonkeyPatch,
                                         d2: object) -> None:
    monkeypatch.setenv("DETRES_DETECTRON2_URL", server.url)
    dst = server.root / D2_FPN
    dst.parent.mkdir(parents=True)
    dst.write_bytes((GOLD / "r50_fpn.pkl").read_bytes())
    cfg = load_config("coco_r50_fpn_3x.yaml", [*d2.small, f"model.weights=detectron2://{D2_FPN}"])
    model = build_detector(cfg)
    load_pretrained(model, cfg.model)  # strict
    want = detectron2_checkpoint(GOLD / "r50_fpn.pkl", cfg)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())


def test_paper_config_keeps_pretrain_cls_trunk() -> None:
    assert load_config("coco_r101.yaml").model.backbone.weights == (
        "output/imagenet_resnet101/model_final.pth")


def test_torchvision_detector_file_is_converted_on_the_fly(server: Server) -> None:
    """torchvision's fasterrcnn_resnet50_fpn state dict (random weights, full size) by URL:
    recognized by its names, converted for coco_r50_fpn.yaml, cached beside the download; the
    torchvision enum's own kind takes the same converter."""
    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(tv.state_dict(), server.root / "fasterrcnn_resnet50_fpn_coco.pth")
    cfg = load_config("coco_r50_fpn.yaml",
                      [f"model.weights={server.url}/fasterrcnn_resnet50_fpn_coco.pth"])
    model = build_detector(cfg)
    load_pretrained(model, cfg.model)  # strict
    want = torchvision_frcnn_checkpoint(tv.state_dict(), cfg)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in want.items())
    raw = cache_dir() / "fasterrcnn_resnet50_fpn_coco.pth"
    converted = hub._converted(raw, "FasterRCNN_ResNet50_FPN_Weights", cfg.model)
    assert converted.parent == raw.parent and converted.name.startswith(
        "fasterrcnn_resnet50_fpn_coco.detres-")
    assert len(list(cache_dir().iterdir())) == 2  # the download and one converted copy
