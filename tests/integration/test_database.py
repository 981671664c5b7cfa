"""What Parley relies on from the MongoDB-compatible server under it, checked on the one the
tests run (FerretDB built by deploy/deps.sh).

Contacts, groups, members and settings change by compare-and-swap: read a document, then
update it with the version read in the filter, so that of two concurrent changes one finds no
match and reads again. That needs MongoDB's single-document atomicity; FerretDB 1.24 did not
have it (a concurrent update could overwrite another and both report a match), which
deploy/local/ferretdb-atomic-update.patch fixes.

A conversation's reads (history, range pulls, unread counts) filter on `conv`. FerretDB 1.24
on SQLite read the whole collection for them; deploy/local/ferretdb-sqlite-pushdown.patch
searches the index on the fields deploy/infra.sh names instead.
"""
import os
import threading
import uuid

import pytest

import pymongo


def test_compare_and_swap_updates_are_atomic(mongo):
    col = mongo["test_cas"]
    col.drop()
    col.insert_one({"_id": "x", "version": 0, "marks": 0})
    wins = []
    errors = []

    def worker():
        # A client of its own, so the threads' commands really run side by side.
        client = pymongo.MongoClient(mongo.client.address[0], mongo.client.address[1])
        c = client[mongo.name]["test_cas"]
        try:
            for _ in range(60):
                v = c.find_one({"_id": "x"})["version"]
                r = c.update_one({"_id": "x", "version": v}, {"$set": {"version": v + 1}})
                if r.matched_count:
                    wins.append(v)
                # Another field changed by a plain $set, as mark_emitted does beside the swaps:
                # it must not bring back an older version.
                c.update_one({"_id": "x"}, {"$inc": {"marks": 1}})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    doc = col.find_one({"_id": "x"})
    col.drop()
    # Every successful swap moved the version by one, from a version no other swap used.
    assert sorted(wins) == list(range(len(wins))), "two swaps matched the same version"
    assert doc["version"] == len(wins), (doc, len(wins))
    assert doc["marks"] == 8 * 60, doc


@pytest.mark.skipif(os.environ.get("PARLEY_DB_BACKEND", "sqlite") != "sqlite",
                    reason="the pushdown patch is for FerretDB's SQLite storage")
def test_a_conversation_is_searched_in_its_index(mongo):
    """The pushdown is on: a find on `conv` reads only the documents whose `conv` is that
    string. Shown with a document that breaks the promise the pushdown relies on (a string in
    every document): an array holding the value, which MongoDB's equality (and a full scan)
    would match, and the index search cannot."""
    probe = "probe:" + uuid.uuid4().hex
    ids = [probe + "-string", probe + "-array"]
    mongo.messages.insert_many([{"_id": ids[0], "conv": probe, "seq": 1},
                                {"_id": ids[1], "conv": [probe], "seq": 2}])
    try:
        got = sorted(d["_id"] for d in mongo.messages.find({"conv": probe, "seq": {"$gt": 0}}))
        # A $or of such equalities is searched term by term (`recent`'s shape).
        either = sorted(d["_id"] for d in mongo.messages.find(
            {"$or": [{"conv": probe}, {"sender": "nobody:" + probe}], "seq": {"$gt": 0}}))
        # An _id beside other conditions is searched by _id (an edit's shape).
        by_id = [d["_id"] for d in mongo.messages.find({"_id": ids[1], "conv": {"$eq": probe}})]
        # {$eq: x} is the same equality, in a shape the patch leaves to the scan.
        scanned = sorted(d["_id"] for d in mongo.messages.find({"conv": {"$eq": probe}}))
    finally:
        mongo.messages.delete_many({"_id": {"$in": ids}})
    assert got == [ids[0]], got
    assert either == [ids[0]], either
    assert by_id == [ids[1]], by_id
    assert scanned == sorted(ids), scanned


@pytest.mark.skipif(os.environ.get("PARLEY_DB_BACKEND", "sqlite") != "sqlite",
                    reason="the pushdown patch is for FerretDB's SQLite storage")
def test_a_limited_find_is_sorted_and_limited_by_sqlite(mongo):
    """A find with a limit whose whole filter and sort SQLite can apply exactly (the shapes of
    a range pull, opening a conversation and `recent`) is sorted and limited there, so
    FerretDB decodes the page and not every match. Shown with a document that breaks the
    promise (`seq` is a number): SQLite sorts its text above every number and the limit
    takes it, then FerretDB's own filter drops it, so one document fewer comes back than
    MongoDB's semantics (and the path without a limit) give."""
    probe = "probe:" + uuid.uuid4().hex
    docs = [{"_id": f"{probe}-{i}", "conv": probe, "seq": i, "kind": "text"} for i in range(1, 6)]
    docs.append({"_id": probe + "-text-seq", "conv": probe, "seq": "9", "kind": "text"})
    mongo.messages.insert_many(docs)
    try:
        query = {"conv": probe, "seq": {"$gt": 0}}
        limited = [d["_id"] for d in mongo.messages.find(query).sort("seq", -1).limit(3)]
        whole = [d["_id"] for d in mongo.messages.find(query).sort("seq", -1)]
    finally:
        mongo.messages.delete_many({"conv": probe})
    assert whole[:3] == [f"{probe}-5", f"{probe}-4", f"{probe}-3"], whole
    assert limited == [f"{probe}-5", f"{probe}-4"], limited


def test_limited_finds_give_mongodbs_answers(mongo):
    """Whatever SQLite applies of a limited find, the answer is MongoDB's: every operator the
    exact pushdown translates (equality, $ne, $in and $nin on strings, with missing fields;
    ranges on numbers and dates; $or and $and), against the same find without a limit, which
    FerretDB answers in Go, and against the answer computed here."""
    import datetime
    probe = "probe:" + uuid.uuid4().hex
    t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    docs = []
    for i in range(60):
        d = {"_id": f"{probe}-{i:02d}", "conv": f"{probe}-c{i % 3}", "seq": i,
             "sender": f"u{i % 4}", "receiver": f"u{(i + 1) % 4}",
             "timestamp": t0 + datetime.timedelta(milliseconds=1000 * (i % 7))}
        if i % 5:
            d["kind"] = ["text", "system", "edit"][i % 3]
        docs.append(d)
    mongo.messages.insert_many(docs)
    c = [f"{probe}-c{k}" for k in range(3)]
    t3 = t0 + datetime.timedelta(seconds=3)
    cases = [
        ({"conv": c[0], "seq": {"$gt": 10, "$lte": 50}}, [("seq", 1)],
         lambda d: d["conv"] == c[0] and 10 < d["seq"] <= 50),
        ({"conv": c[1], "sender": {"$ne": "u1"}, "kind": {"$nin": ["system", "edit"]}}, None,
         lambda d: d["conv"] == c[1] and d["sender"] != "u1"
         and d.get("kind") not in ("system", "edit")),
        ({"$or": [{"sender": "u2", "conv": {"$in": c[:2]}}, {"receiver": "u2", "conv": c[2]},
                  {"conv": c[0], "seq": {"$gte": 30, "$lt": 40}}],
          "kind": {"$ne": "text"}},
         [("timestamp", -1), ("seq", -1)],
         lambda d: ((d["sender"] == "u2" and d["conv"] in c[:2])
                    or (d["receiver"] == "u2" and d["conv"] == c[2])
                    or (d["conv"] == c[0] and 30 <= d["seq"] < 40))
         and d.get("kind") != "text"),
        ({"$and": [{"conv": {"$in": c}}, {"timestamp": {"$gte": t3}}], "seq": {"$lt": 45}},
         [("timestamp", 1), ("seq", -1)],
         lambda d: d["timestamp"] >= t3 and d["seq"] < 45),
        ({"conv": c[2], "kind": {"$in": []}}, None, lambda d: False),
    ]
    try:
        for query, sort, expect in cases:
            def find(limit):
                cur = mongo.messages.find(query)
                if sort:
                    cur = cur.sort(sort)
                return [d["_id"] for d in (cur.limit(limit) if limit else cur)]
            whole = find(0)
            want = [d for d in docs if expect(d)]
            if sort:
                for key, direction in reversed(sort):
                    want.sort(key=lambda d: d[key].replace(tzinfo=None) if key == "timestamp"
                              else d[key], reverse=direction < 0)
            assert sorted(whole) == sorted(d["_id"] for d in want), query
            for limit in (1, 4, 100):
                got = find(limit)
                if sort:
                    assert got == [d["_id"] for d in want][:limit], (query, limit)
                else:
                    assert len(got) == min(limit, len(want)) and set(got) <= set(whole), \
                        (query, limit)
    finally:
        mongo.messages.delete_many({"conv": {"$in": c}})
