import json

import numpy as np
import pytest
import torch

from recsys.data import IdMap, RatingsDataModule
from recsys.data.datamodule import RatingBatches


def _tensors(n):
    return (torch.arange(n), torch.arange(n) * 2, torch.arange(n).float())


@pytest.mark.parametrize("n,batch,world", [(1000, 128, 1), (1000, 128, 2), (1001, 100, 4), (10, 64, 2), (130, 64, 4)])
def test_train_batches_partition_each_epoch_across_ranks(n, batch, world):
    ranks = [RatingBatches(_tensors(n), batch, shuffle=True, seed=1, rank=r, world_size=world)
             for r in range(world)]
    for _epoch in range(2):
        per_rank = [list(iter(ds)) for ds in ranks]
        assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
        assert all(len(b) == len(ds) for b, ds in zip(per_rank, ranks))
        seen = torch.cat([b[0] for batches in per_rank for b in batches])
        assert torch.equal(seen.sort().values, torch.arange(n))  # every rating exactly once
        assert all(len(b[0]) > 0 for batches in per_rank for b in batches)
        assert max(len(b[0]) for batches in per_rank for b in batches) <= -(-batch // world) + world
        for batches in per_rank:  # columns stay aligned
            assert all(torch.equal(b[1], b[0] * 2) for b in batches)
    # a new permutation each epoch, the same for the same seed
    a, b = RatingBatches(_tensors(50), 20, True, seed=1), RatingBatches(_tensors(50), 20, True, seed=1)
    first, second = next(iter(a))[0], next(iter(a))[0]
    assert not torch.equal(first, second) and torch.equal(first, next(iter(b))[0])
    # one batch per epoch (full batch: ALS, Gibbs, full-batch gradient): order changes nothing, none is paid for
    whole = RatingBatches(_tensors(50), 50, True, seed=1, rank=1, world_size=2)
    assert torch.equal(next(iter(whole))[0], torch.arange(25, 50)) and len(whole) == 1


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (1000, 2), (2, 4)])
def test_eval_batches_are_disjoint_contiguous_shards(n, world):
    got = [torch.cat([b[0] for b in RatingBatches(_tensors(n), 3, False, rank=r, world_size=world)] or
                     [torch.empty(0, dtype=torch.long)]) for r in range(world)]
    assert torch.equal(torch.cat(got), torch.arange(n))


def test_id_map_round_trip():
    m, codes = IdMap.fit(np.array(["196", "186", "196", "22"]))
    assert codes.tolist() == [0, 1, 0, 2]
    assert m.to_ids(m.to_index(["22", "196"])).tolist() == ["22", "196"]
    with pytest.raises(KeyError, match="unknown ids"):
        m.to_index(["7"])


def test_datamodule_maps_ids_and_saves_them(udata):
    dm = RatingsDataModule(path=str(udata), split_seed=0)
    dm.setup()
    dm.setup()  # idempotent
    n = sum(len(s[0]) for s in (dm.train_set, dm.val_set, dm.test_set))
    assert n == len(udata.read_text().splitlines())
    assert dm.num_users == 60 and dm.num_items == 40
    facts = dm.facts()
    assert facts.num_train == len(dm.train_set[0]) and (facts.num_users, facts.num_items) == (60, 40)
    assert abs(facts.global_mean - dm.train_set[2].mean().item()) < 1e-6
    assert facts.user_counts.sum().item() == facts.item_counts.sum().item() == facts.num_train
    assert facts.as_dict()["rating_max"] == 5.0 and "user_counts" not in facts.as_dict()
    state = dm.state_dict()
    other = RatingsDataModule(path=str(udata))
    other.load_state_dict(state)
    assert other.user_map.to_ids([0, 5]).tolist() == dm.user_map.to_ids([0, 5]).tolist()


def test_full_batch_when_batch_size_is_null(udata):
    dm = RatingsDataModule(path=str(udata), batch_size=None)
    dm.setup()
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and len(batches[0][0]) == len(dm.train_set[0])


def test_a_split_that_leaves_a_set_empty_is_named(tmp_path):
    path = tmp_path / "tiny.csv"
    path.write_text("user,item,rating\n1,2,3\n2,2,4\n")
    dm = RatingsDataModule(path=str(path))
    with pytest.raises(ValueError, match=r"tiny.csv: 2 ratings split by data.split=random into .* the validation "
                                         r"and test set is empty"):
        dm.setup()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_item_batches_hold_whole_items_and_every_rating_once(world):
    """batch_by=item (I-AutoRec): a batch holds every rating of its items, ranks hold disjoint items."""
    from recsys.data.datamodule import GroupBatches

    g = torch.Generator().manual_seed(0)
    items = torch.randint(0, 40, (600,), generator=g)
    users = torch.arange(600)
    tensors = (users, items, torch.rand(600, generator=g))
    ranks = [GroupBatches(tensors, 100, seed=3, rank=r, world_size=world) for r in range(world)]
    orders = []
    for _epoch in range(2):
        per_rank = [list(iter(ds)) for ds in ranks]
        assert len({len(b) for b in per_rank}) == 1 and all(len(b) == len(ds) for b, ds in zip(per_rank, ranks))
        seen = torch.cat([b[0] for batches in per_rank for b in batches])
        assert torch.equal(seen.sort().values, users)  # every rating exactly once
        for step in zip(*per_rank):
            parts = [set(b[1].tolist()) for b in step]
            assert all(p for p in parts) and sum(map(len, parts)) == len(set().union(*parts))  # disjoint items
            for b in step:  # whole items: all of an item's ratings
                for i in set(b[1].tolist()):
                    assert int((b[1] == i).sum()) == int((items == i).sum())
        orders.append(torch.cat([b[1] for b in per_rank[0]]))
    assert not torch.equal(orders[0], orders[1])  # items reshuffled each epoch


def test_implicit_feedback_trains_on_positives_and_keeps_the_splits_and_seen_items(udata):
    """data.feedback=implicit: models receive the positives (ratings kept); the split, the seen items and the
    evaluation sets are those of explicit feedback, so ranking and rating models meet the same users and items."""
    explicit = RatingsDataModule(path=str(udata))
    explicit.setup()
    every = RatingsDataModule(path=str(udata), feedback="implicit")
    every.setup()
    liked = RatingsDataModule(path=str(udata), feedback="implicit", positive_min=4.0, batch_size=64)
    liked.setup()
    for dm in (every, liked):
        for a, b in zip((dm.val_set, dm.test_set), (explicit.val_set, explicit.test_set)):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert np.array_equal(dm.seen().indptr, explicit.seen().indptr)
        assert np.array_equal(dm.seen().items, explicit.seen().items)
    assert torch.equal(every.interactions("train").ratings, explicit.train_set[2])  # null: every rating
    train = liked.interactions("train")
    keep = explicit.train_set[2] >= 4.0
    assert 0 < len(train) == int(keep.sum()) < len(explicit.train_set[2])
    assert torch.equal(train.users, explicit.train_set[0][keep]) and bool((train.ratings >= 4.0).all())
    batches = list(liked.train_dataloader())
    assert sum(len(b[2]) for b in batches) == len(train) and all(bool((b[2] >= 4.0).all()) for b in batches)
    assert liked.describe()["num_fit"] == len(train) and liked.describe()["feedback"] == "implicit"


def test_positive_min_needs_implicit_feedback_and_some_positives(udata):
    with pytest.raises(ValueError, match="data.positive_min=4.0 selects positives of implicit feedback"):
        RatingsDataModule(path=str(udata), positive_min=4.0)
    with pytest.raises(ValueError, match="data.feedback='both': must be one of"):
        RatingsDataModule(path=str(udata), feedback="both")
    dm = RatingsDataModule(path=str(udata), feedback="implicit", positive_min=6.0)
    with pytest.raises(ValueError, match="data.positive_min=6.0 leaves no positive training interaction"):
        dm.setup()


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampled_negatives_are_unseen_items_keyed_by_seed_and_epoch_and_ranks_draw_disjoint_work(world):
    """BPR's sampler: every negative is an item its user has not interacted with; a rank's batches are its slice of
    what one process draws; the same (seed, epoch) draws the same negatives (a resumed run), another epoch others."""
    from recsys.data.interactions import Interactions

    g = torch.Generator().manual_seed(0)
    n_users, n_items = 30, 12
    cells = torch.randperm(n_users * n_items, generator=g)[:200]
    users, items = cells // n_items, cells % n_items
    train = Interactions(users, items, torch.ones(200), n_users, n_items)
    positives = set(zip(users.tolist(), items.tolist()))

    def draw(rank, world_size, epoch):
        ds = RatingBatches((users, items, torch.ones(200)), 64, True, seed=4, rank=rank, world_size=world_size,
                           epoch_fn=lambda: epoch, negatives=lambda u, gen: train.sample_negatives(u, 3, gen))
        return list(iter(ds))

    single = draw(0, 1, epoch=2)
    assert all(len(b) == 4 and b[3].shape == (len(b[0]), 3) for b in single)
    u_all, neg_all = torch.cat([b[0] for b in single]), torch.cat([b[3] for b in single])
    pairs = zip(u_all.repeat_interleave(3).tolist(), neg_all.reshape(-1).tolist())
    assert not any(pair in positives for pair in pairs)
    assert len(set(neg_all.reshape(-1).tolist())) > n_items // 2  # spread over the catalogue, not a few items
    ranks = [draw(r, world, epoch=2) for r in range(world)]
    for step, whole in enumerate(single):  # the ranks' pieces of each step are the single process's step
        for col in (0, 1, 3):
            assert torch.equal(torch.cat([ranks[r][step][col] for r in range(world)]), whole[col])
    assert all(torch.equal(a[3], b[3]) for a, b in zip(single, draw(0, 1, epoch=2)))  # resumed: the same draw
    assert not torch.equal(torch.cat([b[3] for b in draw(0, 1, epoch=3)]), neg_all)  # a new draw each epoch


def test_negatives_need_rating_batches(udata):
    dm = RatingsDataModule(path=str(udata), batch_by="item")
    dm.setup()
    with pytest.raises(ValueError, match="data.batch_by=item: sampled negatives come with batches of ratings"):
        dm.sample_negatives(1)


def _mapped(path_part: str) -> bool:
    """Whether this process maps a file whose path contains ``path_part``."""
    with open("/proc/self/maps") as maps:
        return any(path_part in line for line in maps)


def test_split_arrays_are_memory_mapped_from_the_split_cache(tmp_path, monkeypatch):
    """The parsed, split arrays are files of the split cache mapped into the process (DDP ranks share their pages):
    a second setup neither parses nor splits and gives the same arrays, summary and records; writes stay private;
    another split has its own entry; data.cache=false keeps them in memory."""
    from recsys.data import datasets

    kw = dict(name="synthetic", num_ratings=3000, split_seed=3)
    first = RatingsDataModule(**kw)
    first.setup()
    folder = tmp_path / "recsys-data" / "synthetic"
    (split,) = folder.glob("split-*")
    assert sorted(p.name for p in split.iterdir())[:3] == ["item_ids.npy", "meta.json", "test.items.npy"]
    assert _mapped(str(split / "train.ratings.npy"))
    monkeypatch.setattr(datasets, "prepare", lambda *a, **k: pytest.fail("parsed again"))
    monkeypatch.setattr(datasets, "split_indices", lambda *a, **k: pytest.fail("split again"))
    second = RatingsDataModule(**kw)
    second.setup()
    for a, b in zip((*first.train_set, *first.val_set, *first.test_set),
                    (*second.train_set, *second.val_set, *second.test_set)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert first.train_set[0].dtype == torch.int64 and first.train_set[2].dtype == torch.float32
    assert second.describe() == first.describe() and second.summary["split"]["test"] == len(first.test_set[0])
    assert np.array_equal(second.user_map.ids, first.user_map.ids)
    second.train_set[2][:] = 0.0  # copy-on-write: the file and other processes keep the ratings
    third = RatingsDataModule(**kw)
    third.setup()
    assert torch.equal(third.train_set[2], first.train_set[2]) and float(first.train_set[2].min()) >= 1
    with pytest.raises(pytest.fail.Exception, match="parsed again"):  # another split seed: another entry
        RatingsDataModule(**{**kw, "split_seed": 4}).setup()
    monkeypatch.undo()
    uncached = RatingsDataModule(**{**kw, "cache": False})
    uncached.setup()
    assert torch.equal(uncached.train_set[0], first.train_set[0]) and len(list(folder.glob("split-*"))) == 1


def test_unreadable_or_half_written_split_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    import logging

    kw = dict(name="synthetic", num_ratings=2000)
    RatingsDataModule(**kw).setup()
    folder = tmp_path / "recsys-data" / "synthetic"
    (split,) = folder.glob("split-*")
    (split / "meta.json").write_text("{garbage")
    with caplog.at_level(logging.WARNING):
        again = RatingsDataModule(**kw)
        again.setup()
    assert "split cache" in caplog.text and "unreadable" in caplog.text and len(again.train_set[0]) == 1700
    assert json.loads((split / "meta.json").read_text())["summary"]["split"]["train"] == 1700  # rewritten whole

    def die(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", die)
    with pytest.raises(KeyboardInterrupt):
        RatingsDataModule(**kw, split_seed=9).setup()
    assert [p.name for p in folder.glob("split-*")] == [split.name]  # no half-written entry left
