#!/usr/bin/env python3
"""Renders BENCHMARKS.md from benches/results: every stored run, newest first. Run by
benches/run.sh; figures come only from the stored reports, never typed in."""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent / "results"


def fmt(v, unit="", digits=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    return f"{v}{unit}"


def pct(v):
    return "-" if v is None else f"{v * 100:.2f}%"


def scenario_rows(name):
    rows = []
    for report_path in sorted((ROOT / name).glob("*.json"), reverse=True):
        if report_path.name.endswith(".meta.json"):
            continue
        meta_path = report_path.with_name(report_path.stem + ".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        r = json.loads(report_path.read_text())
        rows.append((report_path, meta, r))
    return rows


def spread(values):
    """Median and the range of the runs, as `median (min-max)`."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None, "-"
    median = values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2
    return median, f"{median:.0f} ({values[0]:.0f}-{values[-1]:.0f})"


def before_after():
    """The stored runs of benches/before-after.sh: two commits' servers measured turn about."""
    files = sorted((ROOT / "before-after").glob("*.json"), reverse=True) if (ROOT / "before-after").exists() else []
    out = []
    for path in files:
        m = json.loads(path.read_text())
        base, head = m["base"], m["head"]
        out += [f"## Before and after: {base} against {head} ({path.stem[:15]})", "",
                f"Each scenario ran {m['runs']} times per commit, the two servers turn about, measured by the",
                "same load generator. Per packet: median of the runs (lowest-highest). Server ns per forwarded",
                "packet is the generator's figure over the measured window; user and kernel ns are the server's",
                "whole life (joins included) from /proc, kernel time being where the packet path's system calls go.", "",
                "| scenario | commit | server ns per forwarded packet | user ns | kernel ns | worst delivery min | latency p99 (median run) | connected (fewest) |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        scenarios = []
        for r in m["rows"]:
            if r["scenario"] not in scenarios:
                scenarios.append(r["scenario"])
        for name in scenarios:
            medians = {}
            for commit in (base, head):
                rows = [r for r in m["rows"] if r["scenario"] == name and r["commit"] == commit]
                server, server_s = spread(r["server_ns_per_forwarded"] for r in rows)
                user, user_s = spread(r["user_ns_per_forwarded"] for r in rows)
                kernel, kernel_s = spread(r["kernel_ns_per_forwarded"] for r in rows)
                medians[commit] = (server, user, kernel)
                worst = min((r["delivery_min"] for r in rows if r["delivery_min"] is not None), default=None)
                lat, _ = spread(r["latency_p99_ms"] for r in rows)
                fewest = min((r["connected"] or 0 for r in rows), default=0)
                out.append(f"| {name} | {commit} | {server_s} | {user_s} | {kernel_s} | {pct(worst)} | {fmt(lat, ' ms')} | {fewest} / {rows[0]['participants'] if rows else '-'} |")
            ratios = []
            for i in range(3):
                b, h = medians[base][i], medians[head][i]
                ratios.append(f"{h / b:.2f}x" if b and h else "-")
            out.append(f"| {name} | after / before | {ratios[0]} | {ratios[1]} | {ratios[2]} | | | |")
        out += ["", f"Command: `{m['command']}`", "", f"Machine: {m['machine']}", ""]
    return out


def floor_cell(r):
    """Server ns per forwarded packet and its ratio to the machine's floors of the same run."""
    ns = r.get("server_ns_per_forwarded_packet")
    ratio = r.get("floor_ratio") or {}
    floor = r.get("floor") or {}
    if ns is None:
        return "-"
    return "{:.0f} = {} x {} (send) / {} x {} (GSO)".format(
        ns, fmt(ratio.get("send"), "", 2), fmt(floor.get("send_ns"), " ns", 0),
        fmt(ratio.get("gso"), "", 2), fmt(floor.get("gso_ns"), " ns", 0))


def verdict_cell(r):
    """The run against its scenario's targets: PASS, or FAIL and what was missed (reports
    from before scenarios named targets have neither)."""
    if r.get("passed") is None:
        return "-"
    if r.get("passed"):
        return "PASS"
    missed = [c["name"] for c in r.get("targets", []) if not c.get("met")]
    return "FAIL" + (": missed " + ", ".join(missed) if missed else "")


def join_parts_cell(r):
    """Join p99 split into signaling / connecting (ICE and DTLS) / first media, in ms
    (reports before the split have none)."""
    parts = r.get("join_phases_ms")
    if not parts:
        return "-"
    return " / ".join(fmt((parts.get(k) or {}).get("p99"), "", 0) for k in ("signaling", "connecting", "first_media")) + " ms"


def rx_cell(g):
    """The generator's CPU per received packet and who opened them (reports before the own
    receive path have neither)."""
    ns = g.get("ns_per_received_packet")
    return "-" if ns is None else "{:.0f} ({})".format(ns, g.get("rx_path", "?"))


def pair_rows(stem):
    """The two reports of one benches/compare.sh run (its path without the suffixes)."""
    stem = pathlib.Path(stem)
    meta_path = stem.with_name(stem.name + ".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    reports = {}
    for server in ("huiyi", "janus"):
        path = stem.with_name(f"{stem.name}.{server}.json")
        reports[server] = json.loads(path.read_text()) if path.exists() else {}
    return meta, reports


def ratio(a, b, digits=2):
    return "-" if a is None or b is None or b == 0 else f"{a / b:.{digits}f}x"


def pair_table(meta, reports):
    """One compare run: a row per server, then the ratios (Janus over Huiyi: above 1 means
    Janus needs more, or is slower)."""
    h, j = reports.get("huiyi", {}), reports.get("janus", {})

    def get(r, *keys):
        for k in keys:
            r = (r or {}).get(k) if isinstance(r, dict) else None
        return r

    def cores(r):
        return sum(s.get("cpu_cores") or 0 for s in r.get("server") or []) or None

    def rss(r):
        return sum(s.get("peak_rss_mb") or 0 for s in r.get("server") or []) or None

    out = ["| server | connected | failed joins | delivery min / median | pps in (forwarded) | server cores | server ns per forwarded packet = x one-send floor | forwarded pkts per CPU-s | latency p50 / p99 | join p99 | first frame p99 | peak RSS | generator cores | complete |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in (("Huiyi " + meta.get("commit", "?"), h), ("Janus " + meta.get("janus_version", "?"), j)):
        complete = "yes" if r.get("complete") else "no: " + str(r.get("error"))
        if get(r, "generator", "bottleneck"):
            complete += " (generator-bound)"
        out.append("| {} | {} / {} | {} | {} / {} | {:.0f} | {} | {} | {} | {} / {} ms | {} ms | {} ms | {} MiB | {} | {} |".format(
            label, r.get("connected"), r.get("participants"), r.get("failed_joins"),
            pct(get(r, "delivery", "min")), pct(get(r, "delivery", "median")), r.get("pps_in") or 0,
            fmt(cores(r)), "{} = {}".format(fmt(r.get("server_ns_per_forwarded_packet"), "", 0),
                                            fmt(get(r, "floor_ratio", "send"), "x")),
            fmt(r.get("forwarded_packets_per_cpu_second"), "", 0),
            fmt(get(r, "latency_ms", "p50")), fmt(get(r, "latency_ms", "p99")), fmt(get(r, "join_ms", "p99"), "", 0),
            fmt(get(r, "first_frame_ms", "p99"), "", 0), fmt(rss(r), "", 1), fmt(get(r, "generator", "cpu_cores")),
            complete))
    out += ["", "| Janus / Huiyi | CPU per forwarded packet | server cores | latency p99 | join p99 | peak RSS | (Huiyi / Janus) forwarded pkts per CPU-s |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            "| ratio | {} | {} | {} | {} | {} | {} |".format(
                ratio(j.get("server_ns_per_forwarded_packet"), h.get("server_ns_per_forwarded_packet")),
                ratio(cores(j), cores(h)), ratio(get(j, "latency_ms", "p99"), get(h, "latency_ms", "p99")),
                ratio(get(j, "join_ms", "p99"), get(h, "join_ms", "p99")), ratio(rss(j), rss(h)),
                ratio(h.get("forwarded_packets_per_cpu_second"), j.get("forwarded_packets_per_cpu_second")))]
    return out


def compare_section():
    """Every stored benches/compare.sh run, newest first."""
    root = ROOT / "compare"
    if not root.exists():
        return []
    out = ["## Huiyi and Janus side by side (benches/compare.sh)", "",
           "Each run starts Huiyi and then Janus (Debian's package, VideoRoom) as fresh processes on",
           "the same machine, with equal settings (docs/loadtest.md, *Against Janus*), and runs the",
           "same scenario against each. Janus forwards every live microphone (it has no top-N audio),",
           "so it forwards more packets for the same meeting: compare CPU per forwarded packet.", ""]
    for scenario in sorted(p.name for p in root.iterdir() if p.is_dir()):
        metas = sorted((root / scenario).glob("*.meta.json"), reverse=True)
        # The pairs of one run (RUNS=N) together, oldest pair first.
        runs = {}
        for meta_path in metas:
            stem = meta_path.with_name(meta_path.name[: -len(".meta.json")])
            meta, reports = pair_rows(stem)
            runs.setdefault(meta.get("run", stem.name), []).append((stem, meta, reports))
        for run, pairs in sorted(runs.items(), reverse=True):
            pairs.sort(key=lambda p: p[0].name)
            out += [f"### {scenario}, {run}" + (f" ({len(pairs)} pairs, turn about)" if len(pairs) > 1 else ""), ""]
            for stem, meta, reports in pairs:
                if len(pairs) > 1:
                    out += [f"Pair {stem.name}:", ""]
                out += pair_table(meta, reports) + [""]
            if len(pairs) > 1:
                ratios = [(j.get("server_ns_per_forwarded_packet") or 0) / h["server_ns_per_forwarded_packet"]
                          for _, _, rs in pairs for h, j in [(rs.get("huiyi", {}), rs.get("janus", {}))]
                          if h.get("server_ns_per_forwarded_packet") and j.get("server_ns_per_forwarded_packet")]
                ratios.sort()
                if ratios:
                    median = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
                    out += [f"Janus / Huiyi CPU per forwarded packet over the {len(ratios)} pairs: median {median:.2f}x "
                            f"({ratios[0]:.2f}x-{ratios[-1]:.2f}x).", ""]
            meta = pairs[-1][1]
            out += ["Command: `{}` ({} and {}); Janus with {} event loops".format(
                meta.get("command"), f"`{meta.get('huiyi_command')}`", f"`{meta.get('janus_command')}`",
                meta.get("janus_event_loops")), "", "Machine: " + str(meta.get("machine")), ""]
    return out


def instructions_section():
    """Every stored benches/instructions.sh result, newest first."""
    root = ROOT / "instructions"
    results = sorted((p for p in root.glob("*.json") if not p.name.endswith(".report.json")), reverse=True) if root.exists() else []
    if not results:
        return []
    out = ["## Instructions per datagram sent (callgrind, benches/instructions.sh)", "",
           "The server under valgrind's callgrind through a smoke scenario: user-space instructions of",
           "every server thread over the measured window, per datagram the server sent (its own",
           "counter). Counts barely move with the machine's load, so two commits compare where timings",
           "are noise. The kernel's send path is not in them (the floor in each run's report is).", "",
           "| date and commit | scenario | instructions per datagram | instructions | datagrams out | delivery min | where most go |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for path in results:
        r = json.loads(path.read_text())
        report_path = path.with_name(path.stem + ".report.json")
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        top = "; ".join([t.split(":")[-1].split(" [")[0].strip() for t in r.get("top", []) if not t.startswith("-")][:3])
        stamp = path.stem[: -len(r["scenario"]) - 1]
        out.append("| {} | {} | {} | {:,} | {:,} | {} | {} |".format(
            stamp, r["scenario"], fmt(r.get("instructions_per_datagram"), "", 0), r["instructions"],
            r["datagrams_out"], pct((report.get("delivery") or {}).get("min")), top or "-"))
    machines = sorted({json.loads(p.read_text()).get("machine") for p in results})
    out += ["", "Command: `benches/instructions.sh` (each run's loadtest command is in its JSON)", "",
            "Machine: " + "; ".join(machines), ""]
    return out


def broadcast_table(name, rows):
    """A live class: players, their first frame, and each process of the tier."""
    out = [f"## {name}", "",
           "Players POST to WHEP at the origin and are sent by 307 to an edge; the teacher publishes",
           "q/h/f over WHIP to the origin. First frame: from the player's offer to the end of its first",
           "keyframe received whole. Latency: from the teacher's send through origin, relay link and edge.",
           "The floor is this machine's own, measured by the same run before the joins (AES-GCM seal",
           "and loopback send of a 1,200-byte datagram). Tier on: CPU 0 when the origin and edges",
           "were held to one CPU and the generator to the other (`benches/run.sh`), any CPU when",
           "every process shared both (`benches/run.sh --tier-any-cpu`; from 6207dc7 on, the generator",
           "then runs at nice 10, so it takes the CPU the tier leaves). Generator ns per received",
           "packet: all its CPU over the packets it received, and which path opened them.", "",
           "| date | commit | tier on | players connected | failed joins | delivery min / p1 / median | off their layer | first frame p50 / p99 / max | join p99 in parts: signaling / connecting / first media | latency p50 / p99 / max | tier cores (each process: cores, peak RSS) | server ns per forwarded packet = x floor | generator cores / busiest thread | generator ns per received packet | complete | targets |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for path, meta, r in rows:
        d = r.get("delivery", {})
        lat = r.get("latency_ms", {})
        ff = r.get("first_frame_ms", {})
        parts_cell = join_parts_cell(r)
        g = r.get("generator", {})
        server = r.get("server") or []
        tier = sum((p.get("cpu_cores") or 0.0 for p in server), 0.0)
        each = ", ".join("{} {:.2f} / {:.0f} MiB".format(p.get("name", p.get("pid")), p.get("cpu_cores") or 0.0, p.get("peak_rss_mb") or 0.0) for p in server)
        complete = "yes" if r.get("complete") else "no: " + str(r.get("error"))
        if g.get("bottleneck"):
            complete += " (generator-bound)"
        players = max(0, (r.get("participants") or 0) - 1)
        connected = max(0, (r.get("connected") or 0) - 1)
        # Runs from before `tier_cpus` was recorded held the tier to CPU 0.
        tier_on = "any CPU" if meta.get("tier_cpus") == "any" else "CPU 0"
        out.append("| {} | {} | {} | {} / {} | {} | {} / {} / {} | {} | {} / {} / {} ms | {} | {} / {} / {} ms | {:.2f} ({}) | {} | {} / {}% | {} | {} | {} |".format(
            r.get("date"), meta.get("commit", "?"), tier_on, connected, players, r.get("failed_joins"),
            pct(d.get("min")), pct(d.get("p1")), pct(d.get("median")), r.get("players_off_layer", "-"),
            fmt(ff.get("p50"), "", 0), fmt(ff.get("p99"), "", 0), fmt(ff.get("max"), "", 0), parts_cell,
            fmt(lat.get("p50")), fmt(lat.get("p99")), fmt(lat.get("max")),
            tier, each, floor_cell(r), fmt(g.get("cpu_cores")), fmt((g.get("busiest_thread") or 0) * 100, "", 0),
            rx_cell(g), complete, verdict_cell(r)))
    out.append("")
    commands = sorted({m.get("command") for _, m, _ in rows if m.get("command")})
    machines = sorted({m.get("machine") for _, m, _ in rows if m.get("machine")})
    out += ["Command: " + "; ".join(f"`{c}`" for c in commands), "", "Machine: " + "; ".join(machines), ""]
    return out


def main():
    out = ["# Benchmarks", "",
           "Every figure below comes from a run of `benches/run.sh` on the machine named with it;",
           "this file is rendered from the stored reports in `benches/results/` by",
           "`benches/render.py` (never edited by hand). Scenarios are defined in SCENARIOS.md",
           "and `benches/scenarios/`; the report's keys in docs/loadtest.md.", "",
           "Selective forwarding (issue 4, from commit bc63f3f) changed the scenario files: meeting-300",
           "publishes simulcast and every participant views a 5x5 grid, audio-3000's panel talks three at a",
           "time, and rooms above 10 forward only the top-3 speakers. Rows from earlier commits measure",
           "the old shapes (every track to everyone) and are kept as the before.", ""]
    out += before_after()
    out += compare_section()
    out += instructions_section()
    names = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name not in ("micro", "before-after", "compare", "instructions")) if ROOT.exists() else []
    for name in names:
        rows = scenario_rows(name)
        if not rows:
            continue
        if name.startswith("broadcast"):
            out += broadcast_table(name, rows)
            continue
        out += [f"## {name}", ""]
        out += ["| date | commit | connected | failed / refused (node full) joins | delivery min / p1 / median | frozen tiles | loss | latency p50 / p99 / max | jitter p99 | join p99 | join p99 in parts: signaling / connecting / first media | first keyframe p99 | pps in / out | server cores | server peak RSS | forwarded pkts per CPU-s | server ns per forwarded packet = x floor | generator cores / busiest thread (joining) | generator ns per received packet | complete | targets |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for path, meta, r in rows:
            server = r.get("server") or [{}]
            s = server[0]
            g = r.get("generator", {})
            lat = r.get("latency_ms", {})
            d = r.get("delivery", {})
            complete = "yes" if r.get("complete") else "no: " + str(r.get("error"))
            if g.get("bottleneck"):
                complete += " (generator-bound)"
            out.append("| {} | {} | {} / {} | {} / {} | {} / {} / {} | {} | {} | {} / {} / {} ms | {} ms | {} ms | {} | {} ms | {:.0f} / {:.0f} | {} | {} MiB | {} | {} | {} / {}% ({}) | {} | {} | {} |".format(
                r.get("date"), meta.get("commit", "?"), r.get("connected"), r.get("participants"), r.get("failed_joins"),
                r.get("refused_joins", "-"),
                pct(d.get("min")), pct(d.get("p1")), pct(d.get("median")),
                r.get("frozen_subscriptions", "-"), fmt(r.get("loss_pct"), "%", 3),
                fmt(lat.get("p50")), fmt(lat.get("p99")), fmt(lat.get("max")), fmt(r.get("jitter_ms", {}).get("p99")),
                fmt((r.get("join_ms") or {}).get("p99"), "", 0), join_parts_cell(r),
                fmt((r.get("first_keyframe_ms") or {}).get("p99"), "", 0),
                r.get("pps_in", 0), r.get("pps_out", 0), fmt(s.get("cpu_cores")), fmt(s.get("peak_rss_mb"), "", 1),
                fmt(r.get("forwarded_packets_per_cpu_second"), "", 0), floor_cell(r), fmt(g.get("cpu_cores")),
                fmt((g.get("busiest_thread") or 0) * 100, "", 0),
                fmt(g["busiest_thread_joining"] * 100, "%", 0) if "busiest_thread_joining" in g else "-", rx_cell(g),
                complete, verdict_cell(r)))
        out.append("")
        commands = sorted({m.get("command") for _, m, _ in rows if m.get("command")})
        machines = sorted({m.get("machine") for _, m, _ in rows if m.get("machine")})
        out += ["Command: " + "; ".join(f"`{c}`" for c in commands), "", "Machine: " + "; ".join(machines), ""]
    micro = sorted((ROOT / "micro").glob("*.json"), reverse=True) if (ROOT / "micro").exists() else []
    if micro:
        out += ["## Micro-benchmarks (criterion, median)", "",
                "| date and commit | benchmark | time per iteration | per element |", "| --- | --- | --- | --- |"]
        for path in micro:
            m = json.loads(path.read_text())
            for bench, v in sorted(m["results"].items()):
                per = v["median_ns"] / v["elements"] if v.get("elements") else None
                out.append(f"| {path.stem} | {bench} | {v['median_ns']:.1f} ns | {fmt(per, ' ns', 1)} |")
        out += ["", "Command: `" + json.loads(micro[0].read_text())["command"] + "`", "",
                "Machine: " + json.loads(micro[0].read_text())["machine"], ""]
    print("\n".join(out))


if len(sys.argv) == 3 and sys.argv[1] == "--pair":
    # One compare.sh run, printed as it finishes.
    print("\n".join(pair_table(*pair_rows(sys.argv[2]))))
else:
    main()
