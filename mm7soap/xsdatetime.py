"""xs:dateTime (XML Schema 1.0 part 2, §3.2.7): which texts are one, and the instant each names.

A date that matches the lexical pattern can still name no time: month 13, February 30,
hour 25, a leap second `23:59:60`, a zone of `+25:00`.  Those used to reach Python's
`datetime` inside the service and raise, so the MMSC got 3000 and retried for ever (issue
17).  Here they are simply not an xs:dateTime: the request is stored with the date as sent
and the normalised column NULL.  So is a valid one that has no UTC instant Python can hold
(a year past 9999 or before 1, or 0001-01-01T00:00:00+01:00, whose UTC is in year 0).
`24:00:00` is valid: the first instant of the next day.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

# The lexical form: a year of four digits or more (no leading zero past four), two-digit
# month, day, hour, minute and second, an optional fraction of any length, an optional zone.
PATTERN = re.compile(
    r"(-?(?:[1-9]\d{4,}|\d{4}))-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?",
    re.ASCII,  # digits are 0-9 only: int() would read other scripts' digits too
)

# The zone may be at most 14 hours from UTC.
LONGEST_OFFSET = timedelta(hours=14)


@lru_cache(maxsize=256)  # each date is read twice: by `canonical`, then by `binding`
def parse(text: str) -> datetime | None:
    """The time `text` names: aware when it has a zone, naive (meant as UTC) when not; None
    when it is not an xs:dateTime, or names a time outside what `datetime` can hold."""
    match = PATTERN.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if len(year.lstrip("-")) > 4:  # valid, but past 9999: no time `datetime` holds (and int()
        return None  # refuses a year of thousands of digits)
    numbers = int(year), int(month), int(day), int(hour), int(minute), int(second)
    if not valid_fields(*numbers, fraction):
        return None
    offset = zone_offset(zone)
    if zone is not None and offset is None:
        return None
    return instant(numbers, fraction, offset)


def valid_fields(year: int, month: int, day: int, hour: int, minute: int, second: int, fraction: str | None) -> bool:
    """The calendar and clock limits; `24:00:00` only with a zero fraction."""
    if year == 0 or not 1 <= month <= 12 or minute > 59 or second > 59:
        return False
    # The Gregorian rule, for years `datetime` cannot hold as well (they are still valid).
    leap_year = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    days = calendar.mdays[month] + (1 if month == 2 and leap_year else 0)
    if not 1 <= day <= days:
        return False
    if hour == 24:
        return minute == 0 and second == 0 and not (fraction or "").strip("0")
    return hour <= 23


def zone_offset(zone: str | None) -> timedelta | None:
    """`Z` or `±hh:mm` as an offset from UTC; None when absent or out of range."""
    if zone is None:
        return None
    if zone == "Z":
        return timedelta(0)
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    offset = timedelta(hours=hours, minutes=minutes)
    if minutes > 59 or offset > LONGEST_OFFSET:
        return None
    return -offset if zone[0] == "-" else offset


def instant(numbers: tuple[int, ...], fraction: str | None, offset: timedelta | None) -> datetime | None:
    """The datetime of valid fields, if `datetime` can hold it and its UTC instant."""
    year, month, day, hour, minute, second = numbers
    microsecond = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        moment = datetime(year, month, day, min(hour, 23), minute, second, microsecond)
        if hour == 24:  # the end of the day is the start of the next
            moment = datetime(year, month, day) + timedelta(days=1)
        if offset is None:
            return moment
        aware = moment.replace(tzinfo=timezone(offset))
        aware.astimezone(timezone.utc)  # raises when the UTC instant is out of range
        return aware
    except (ValueError, OverflowError):
        return None
