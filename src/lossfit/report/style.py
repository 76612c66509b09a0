"""The report's inline style sheet (no fonts or images to fetch; narrow screens get smaller margins)."""

CSS = """\
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --ok: #1a7f37; --fail: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.8em; margin: 0.2em 0; }
h2 { font-size: 1.35em; margin: 0 0 0.4em; }
header { border-bottom: 1px solid var(--line); margin-bottom: 16px; }
.generated, .note, footer { color: var(--muted); }
.note { font-style: italic; margin-top: 0; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 8px 20px; }
nav.toc h2 { font-size: 1.05em; margin: 6px 0; }
nav.toc ol { margin: 0 0 6px; padding-left: 1.4em; }
nav.toc li { margin: 3px 0; }
a { color: #0969da; text-decoration: none; }
a:hover { text-decoration: underline; }
section { margin: 28px 0; padding-top: 8px; border-top: 1px solid var(--line); }
.badge { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 0.85em; font-weight: 600;
         color: #fff; white-space: nowrap; vertical-align: baseline; }
.badge.ok { background: var(--ok); }
.badge.fail { background: var(--fail); }
.status .reason { margin-left: 8px; }
.text { white-space: pre-line; }
.table-wrap { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 0.92em; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, Menlo, Consolas, monospace; }
td.empty { color: var(--muted); font-style: italic; }
figure { margin: 16px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      overflow-x: auto; font-size: 0.9em; }
footer { border-top: 1px solid var(--line); margin-top: 32px; padding-top: 8px; font-size: 0.85em; }
@media (max-width: 640px) { main { padding: 12px 14px 32px; } body { font-size: 14px; } }
@media print { nav.toc { display: none; } section { break-inside: avoid-page; } }
"""
