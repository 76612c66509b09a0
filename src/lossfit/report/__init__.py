"""Self-contained HTML reports: sections of status badges, tables, figures and text in one file.

The file needs no network and no JavaScript: styles are inline and images are embedded as ``data:`` URIs. Every
string a user supplies (titles, notes, captions, table keys and values, messages) is HTML-escaped.

Example:
    >>> from lossfit.report import Report
    >>> report = Report(title="lossfit demo")
    >>> section = report.section("Curve fit", note="y = a (1 - exp(-b x))")
    >>> _ = section.table([{"parameter": "a", "value": 2.5}], caption="Parameters")
    >>> report.render().startswith("<!DOCTYPE html>")
    True
"""

from lossfit.report.html import Report, Section

__all__ = ["Report", "Section"]
