"""Stage 4: the fact builder. Turns a document's spans (gold or predicted) into one fact per VALUE span.

Input: the ORIGINAL text and spans with ``.start .end .label .text`` at original offsets. All rules read the
normalized view (Simplified, half-width, markdown/pinyin noise removed: ``nlp.reader.normalize``); every
reported offset and text is the original one, as in the gold files (annotations/GUIDELINES.md, "Facts").

Chinese numerals (三百一十一亿, 千万, 十余) are read with cn2an (PyPI); everything else is plain rules with small
tables of cue words at the top of this module.

Public API
----------
- ``build_facts(text, spans, doc=None) -> list[Fact]``
- ``parse_value(text) -> ParsedValue``: 311亿元 -> 31100000000.0 CNY; 超七成 -> 70.0 % '>'; 翻倍 -> 1.0 times
- ``normalize_period(text, reporting_period, current=None, as_at=False) -> str | None``
- ``reporting_period(text, spans) -> str | None``
- ``score_facts(pred_facts, gold_facts) -> dict``: fact-level P/R/F1 and per-field accuracy

How a fact is built (each step is a small function below):
1. The text is cut into paragraphs (lines), sentences (。!?;) and clauses (commas, colons, table cells).
2. The VALUE text gives value, unit and qualifier (``parse_value``); a verb just before the span (突破, 超过了,
   约为, 最高达) can add the qualifier; a value without a unit takes its enumeration partner's unit, a filing's
   ``(人民币百万元)`` caption, or CNY for money metrics / count otherwise.
3. Measure and direction come from the words between the value and the previous value of its clause
   (增长/下降 after 同比/环比/较…), the words right after it (…的同比增长) and share cues (占, 占比, 贡献, 中有).
4. Metric: the METRIC just before it in the sentence (share bases after 占 skipped, enumerations mapped i-th to
   i-th), or the METRIC right after it when none precedes; entity: the nearest ENTITY before it in the
   sentence, after it in the clause, the previous sentences' entity, then the document's main entity.
5. Period: the PERIOD bound to it or scoping its sentence, else the one carried through the paragraph, else the
   reporting period; normalized by ``normalize_period``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from .reader import NormalizedText, normalize

# --------------------------------------------------------------------------------------------- cue tables

# Qualifier words inside a VALUE span (prefix / suffix / after the numeral).
_Q_PREFIX = (("未超过", "<="), ("不超过", "<="), ("最高达", "<="), ("最高", "<="), ("最多", "<="), ("至多", "<="),
             ("至少", ">="), ("不低于", ">="), ("不少于", ">="),
             ("超过", ">"), ("超出", ">"), ("超", ">"), ("逾", ">"), ("多于", ">"), ("高于", ">"),
             ("将近", "~"), ("接近", "~"), ("大约", "~"), ("约", "~"), ("近", "~"), ("大概", "~"),
             ("不到", "<"), ("不足", "<"), ("低于", "<"), ("少于", "<"))
_Q_SUFFIX = (("以上", ">"), ("有余", ">"), ("左右", "~"), ("上下", "~"), ("以下", "<"), ("以内", "<="),
             ("之内", "<="))
# Verbs written just before a VALUE span that make it approximate or a bound (the gold conventions: 破3亿 and
# 突破4亿 are '>', 约为36.6K is '~', 最高达2分钟 is '<=').
_Q_BEFORE = re.compile(r"(未超过|不超过|最高达到?|最多|至多|至少|不低于|突破了?|破|超过了?|超出了?|高达?于|"
                       r"约为|约合|大约|约|接近|将近|近|不到|不足|低于)$")
_Q_BEFORE_MAP = {"未超过": "<=", "不超过": "<=", "最多": "<=", "至多": "<=", "至少": ">=", "不低于": ">=",
                 "约为": "~", "约合": "~", "大约": "~", "约": "~", "接近": "~", "将近": "~", "近": "~",
                 "不到": "<", "不足": "<", "低于": "<"}

_CURRENCIES = (("人民币", "CNY"), ("RMB", "CNY"), ("美元", "USD"), ("美金", "USD"), ("US$", "USD"),
               ("港元", "HKD"), ("港币", "HKD"), ("HK$", "HKD"), ("欧元", "EUR"), ("日元", "JPY"),
               ("元", "CNY"), ("¥", "CNY"), ("￥", "CNY"))
_SCALES = {"billion": 1e9, "million": 1e6, "mn": 1e6, "万亿": 1e12, "千亿": 1e11, "百亿": 1e10, "十亿": 1e9, "亿": 1e8, "千万": 1e7, "百万": 1e6,
           "十万": 1e5, "万": 1e4, "千": 1e3, "百": 1e2, "K": 1e3, "k": 1e3, "M": 1e6, "B": 1e9, "bn": 1e9}
_SCALE_RE = "billion|million|bn|mn|万亿|千亿|百亿|十亿|亿|千万|百万|十万|万|千|百|K|k|M|B"
# Units after the numeral and scale word, longest first. 成 is tenths (七成 = 70%).
_UNITS = (("个百分点", "pp"), ("百分点", "pp"), ("pp", "pp"), ("ppt", "pp"), ("%", "%"), ("倍", "times"),
          ("成", "%"), ("个小时", "hour"), ("小时", "hour"), ("分钟", "minute"),
          ("秒钟", "second"), ("秒", "second"), ("个月", "month"), ("天", "day"), ("周", "week"),
          ("年", "year"))
_COUNTERS = "人次|人|个|家|次|对|张|位|户|件|单|款|场|篇|条|台|部|名|座|所|只|份|笔|项|辆|间|套"
_CN_NUM = "零〇一二两三四五六七八九十百千万亿"

# Metric words that make a unit-less amount money (the gold infers CNY for these), unless the metric counts
# people or things.
_MONEY_METRIC = re.compile(r"收入|营收|利润|GMV|gmv|消耗|流水|成交额|交易额|销售额|营业额|工资|薪资|薪酬|月薪|开支|"
                           r"成本|毛利|亏损|现金|收益|费用|支出|金额|日入|市值|净额|盈利|资产|负债|存款|规模|"
                           r"客单价|ARPU|溢价|订单额|花费|投入|预算|估值|融资|营业额|价格|售价")
_COUNT_METRIC = re.compile(r"用户|人数|人次|买家|商家|主播|作者|线索|次数|数量|数$|量$|户数|人员|岗位|直播间")

# Change verbs (the value after them is a change) and their polarity.
_CHANGE_VERB = re.compile(r"同比增长|增长率|增长|增加|增幅|增速|增量|提升|提高|上升|上涨|攀升|回升|涨幅|涨|增|翻|"
                          r"高出|多出|扩大|下降|减少|降低|收窄|缩窄|缩短|下滑|下跌|降幅|减幅|跌幅|跌|减|降|蚀")
_DOWN = re.compile(r"下降|减少|降低|收窄|缩窄|缩短|下滑|下跌|降幅|减幅|跌幅|跌|减|降|蚀|亏损扩大")
# After these the value is the level reached (提升至82%, 增长15%至3053亿元, 攀升,达到了26.9亿元).
_LEVEL_AFTER = re.compile(r"至|到|达到?|录得")
# Right after the value: "90%的同比增长", "30%以上的增长", "19.7%的同比增长率", "72%销量增长" (table cell).
_POST_CHANGE = re.compile(r"^的(同比|环比|按年|按季)?(增长|增幅|增速|提升|上升|涨幅|下降|降幅|减少|增加|回升)")

_YOY = re.compile(r"同比|按年|年比|[Yy]o[Yy]|较去年同期|较上年同期|比去年同期|与去年同期|较去年|较上年|比上年|"
                  r"比去年|相比去年|相较去年")
_QOQ = re.compile(r"环比|按季|[Qq]o[Qq]|较上季|较上一季|较上个季|比上季|比上一季|相比上季|相较上季")
_MEASURE_WORD = {"同比": "yoy", "按年": "yoy", "环比": "qoq", "按季": "qoq"}
# Words that make the following PERIOD a comparison base (from, compared with).
_BASE_BEFORE = re.compile(r"(由|从|较|相比|相较于?|比|对比|与|环比|同比|比较)$")
_RELATIVE_BASE = re.compile(r"同期|上季|上一季|上个季|上一个季|去年|上年|上一年")

# Share cues: the proportion of a whole (占…的, 占比, 贡献…%, "M中, 有40%"), the 比例 / 比重 of something.
_SHARE = re.compile(r"占|比例|比重|贡献|份额")
_SHARE_BASE_BEFORE = re.compile(r"(占|占比|对)(当地|整个|全部|全体|其|总体)?$")

# Modality cues, read in the sentence before the value. 计划 (a programme) and 符合预期 (met expectations) are
# not forecasts.
_FORECAST = re.compile(r"预计|(?<!符合)(?<!超出)(?<!超)(?<!不及)(?<!低于)(?<!高于)预期|展望|指引|有望|"
                       r"目标(是|为|达到?|实现)|将(会)?(达|实现|超|突破|增长|提升|保持|录得)|会达到|[Gg]uidance")
_ESTIMATE = re.compile(r"一致预期|市场预期|分析师(的)?(预期|预测|预计|估计)|预测值|估计|[Cc]onsensus|彭博")

_SENT_END = "。!?;"
_LIST_ITEM = re.compile(r"^\s*([-*+•]\s|\d+[.)、]\s?|[（(]\d+[)）])")
_HEADING = re.compile(r"^\s*(#{1,6}\s|title:)")
# Unit caption of filings' tables: (人民币百万元), （单位：千元）, (人民币百万元，百分比除外). A currency or a scale
# word must be written.
_CAPTION = re.compile(r"[(（]\s*(?:单位[:：]\s*)?(人民币|美元|港元|港币)?\s*(千|万|百万|千万|亿|十亿)?元"
                      r"(?:[,，、;；][^)）]{0,16})?[)）]")


# --------------------------------------------------------------------------------------------- data classes

@dataclass
class ParsedValue:
    """What a VALUE text says by itself. `unit` is None when the text names none (a bare count or amount)."""

    value: float
    unit: str | None
    qualifier: str | None
    number: float = 0.0          # the numeral before scaling (311 in 311亿元)
    scale: float = 1.0           # 1e8 for 亿
    currency: str | None = None  # CNY / USD / HKD when a currency word is written
    sign: str | None = None      # '+' or '-' when written
    counter: str | None = None   # 人次, 个, ... (unit 'count')


@dataclass
class Fact:
    value_span: list[int]
    value_text: str
    entity: str | None
    metric: str | None
    period: str | None
    period_text: str | None
    measure: str
    value: float
    unit: str
    qualifier: str | None
    direction: str | None
    modality: str
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Mention:
    label: str
    start: int       # normalized offsets
    end: int
    text: str        # normalized text
    ostart: int      # original offsets and text
    oend: int
    otext: str


@dataclass
class _Sentence:
    start: int
    end: int
    para: int
    clauses: list[tuple[int, int]]
    mentions: list[_Mention]
    heading: bool = False
    table_row: bool = False
    cells: list[tuple[int, int]] = field(default_factory=list)
    header: "_Sentence | None" = None     # table rows: the header row of their table
    inherit: int | None = None            # list items: index of the intro sentence they continue


# --------------------------------------------------------------------------------------------- values

def _strip(text: str) -> str:
    return normalize(text).text.replace(" ", "").replace("\u00a0", "")


def _cn_to_number(s: str) -> float | None:
    """Chinese numeral -> number (cn2an, the maintained converter); 千万 / 十余 style heads get their implied 一."""
    import cn2an

    if not s:
        return None
    if s[0] in "十百千万亿":
        s = "一" + s
    try:
        return float(cn2an.cn2an(s, "smart"))
    except (ValueError, KeyError, TypeError):
        pass
    # cn2an rejects some well-formed strings (e.g. 两万亿): split off the last scale word and retry
    for sc in ("万亿", "亿", "万"):
        if s.endswith(sc) and len(s) > len(sc):
            head = _cn_to_number(s[: -len(sc)])
            if head is not None:
                return head * _SCALES[sc]
    return None


def parse_value(text: str) -> ParsedValue:
    """Parse one VALUE text (original or normalized; full-width digits, Traditional script, inner spaces and
    markdown markers are all fine). Raises ValueError when it holds no number.

    A predicted span that took a verb along (增长11.6%, 突破3亿) is read from its first numeral, the words
    before it giving the qualifier as they would before a gold span."""
    try:
        return _parse_value(_strip(text), text)
    except ValueError:
        t = _strip(text)
        m = re.search(r"\d|翻倍|翻番", t)
        if not m or m.start() == 0:
            raise
        pv = _parse_value(t[m.start():], text)
        qm = _Q_BEFORE.search(t[:m.start()])
        if pv.qualifier is None and qm:
            pv.qualifier = _qualifier_word(qm.group(1))
        return pv


def _qualifier_word(w: str) -> str:
    """The qualifier a verb just before a value gives (突破 / 超过了 '>', 约为 '~', 最高达 '<=')."""
    q = next((q for k, q in _Q_BEFORE_MAP.items() if w.startswith(k)), None)
    return q or ("<=" if w.startswith("最高") else ">")


def _parse_value(t: str, text: str) -> ParsedValue:
    qualifier = None
    for w, q in _Q_PREFIX:
        if t.startswith(w):
            qualifier, t = q, t[len(w):]
            break
    for w, q in _Q_SUFFIX:
        if t.endswith(w):
            qualifier, t = qualifier or q, t[: -len(w)]
            break
    currency = None
    for w, c in _CURRENCIES:
        if w in t:
            currency = c
            t = t.replace(w, "", 1)
            if w == "人民币" and "元" in t:  # 人民币26.9亿元: drop the 元 too
                t = t.replace("元", "", 1)
            break
    # per-share figures: 每股0.5元, 0.5元/股
    per_share = bool(re.search(r"每股|/股", t))
    t = re.sub(r"每股|/股", "", t)
    sign = None
    if t and t[0] in "+-−":
        sign, t = ("-" if t[0] in "-−" else "+"), t[1:]
    # 翻倍 / 翻番: the amount doubled = grew by one time
    if re.fullmatch(r"(翻倍|翻番|翻一番|翻了一番)", t):
        return ParsedValue(1.0, "times", qualifier, 1.0, 1.0, currency, sign)
    m = re.match(rf"(\d[\d,]*(?:\.\d+)?)\s*({_SCALE_RE})?", t)
    if m:
        number = float(m.group(1).replace(",", ""))
        scale = _SCALES.get(m.group(2) or "", 1.0)
        rest = t[m.end():]
    else:
        m = re.match(rf"[{_CN_NUM}]+", t)
        if not m:
            raise ValueError(f"no number in value text {text!r}")
        cn = m.group(0)
        rest = t[m.end():]
        # 十余 / 两百多: the approximation word sits inside the numeral
        number = _cn_to_number(cn)
        if number is None:
            raise ValueError(f"cannot read the Chinese numeral in {text!r}")
        scale = 1.0
    if rest[:1] and rest[:1] in "余多":  # 十余次, 120余个, 两百多个
        qualifier = qualifier or ">"
        rest = rest[1:]
    unit = None
    counter = None
    unit_word = ""
    for w, u in _UNITS:
        if rest.startswith(w):
            unit, unit_word, rest = u, w, rest[len(w):]
            break
    if unit is None:
        cm = re.match(_COUNTERS, rest)
        if cm:
            unit, counter = "count", cm.group(0)
            rest = rest[cm.end():]
    for w, q in _Q_SUFFIX:  # 25%以上, 75分钟以上
        if rest.startswith(w) or rest.endswith(w):
            qualifier = qualifier or q
    value = number * scale
    if unit_word == "成":
        value = number * 10.0  # 七成 = 70%
    if currency:
        unit = currency if unit in (None, "count") else unit
    if per_share:
        unit = f"{currency or 'CNY'}/share"
    return ParsedValue(float(value), unit, qualifier, number, scale, currency, sign, counter)


# --------------------------------------------------------------------------------------------- periods

_CN_DIGIT = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
             "九": 9}
_QUARTER = {"一": 1, "二": 2, "三": 3, "四": 4, "1": 1, "2": 2, "3": 3, "4": 4}
# Shopping festivals and their month (618 = June, 双11 = November); a festival period normalizes to the quarter
# that contains it (guideline decision 7).
_FESTIVALS = ((re.compile(r"(?<!\d)618(?!\d)"), 6), (re.compile(r"(?<!\d)818(?!\d)"), 8),
              (re.compile(r"双(11|十一)"), 11), (re.compile(r"双(12|十二)"), 12), (re.compile(r"双(9|九)"), 9))


def _cn_small(s: str) -> int | None:
    """Small Chinese numbers of dates: 九 -> 9, 十二 -> 12, 三十 -> 30, 三十一 -> 31."""
    if s.isdigit():
        return int(s)
    if not s or any(c not in _CN_DIGIT and c != "十" for c in s):
        return None
    if "十" not in s:
        return _CN_DIGIT[s] if len(s) == 1 else None
    head, _, tail = s.partition("十")
    return (_CN_DIGIT.get(head, 1) if head else 1) * 10 + (_CN_DIGIT.get(tail, 0) if tail else 0)


def _digits_for_dates(t: str) -> str:
    """二零二四年九月三十日 -> 2024年9月30日 (years written digit by digit, months and days as numbers)."""
    t = re.sub(r"[零〇一二三四五六七八九]{4}(?=年)", lambda m: "".join(str(_CN_DIGIT[c]) for c in m.group(0)), t)
    t = re.sub(r"(?<![\d零〇一二三四五六七八九十])([一二三四五六七八九十]{1,3})(?=月|日|号|个月)",
               lambda m: str(_cn_small(m.group(1)) or m.group(1)), t)
    return t


def _parse_rp(rp: str | None) -> tuple[int | None, str, int, int]:
    """A normalized period -> (year, kind, a, b): kind Y (year), Q (a), H (a), M (a), YTD (Qa-Qb), R (a-b)."""
    if not rp:
        return None, "", 0, 0
    m = re.fullmatch(r"(\d{4})Q([1-4])-Q([1-4])", rp)
    if m:
        return int(m.group(1)), "YTD", int(m.group(2)), int(m.group(3))
    m = re.fullmatch(r"(\d{4})Q([1-4])", rp)
    if m:
        return int(m.group(1)), "Q", int(m.group(2)), 0
    m = re.fullmatch(r"(\d{4})H([12])", rp)
    if m:
        return int(m.group(1)), "H", int(m.group(2)), 0
    m = re.fullmatch(r"(\d{4})-(\d{2})", rp)
    if m:
        return int(m.group(1)), "M", int(m.group(2)), 0
    m = re.fullmatch(r"(\d{4})-(\d{4})", rp)
    if m:
        return int(m.group(1)), "R", int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"(\d{4})", rp)
    if m:
        return int(m.group(1)), "Y", 0, 0
    return None, "", 0, 0


def _fmt(year: int, kind: str, a: int = 0, b: int = 0) -> str:
    if kind == "Q":
        return f"{year}Q{a}"
    if kind == "H":
        return f"{year}H{a}"
    if kind == "M":
        return f"{year}-{a:02d}"
    if kind == "YTD":
        return f"{year}Q{a}-Q{b}" if a != b else f"{year}Q{a}"
    if kind == "R":
        return f"{a}-{b}"
    return f"{year}"


def _as_at(year: int, kind: str, a: int, b: int) -> str:
    """An "as at" reading of a period: its last month (截至2023年第二季度 -> 2023-06)."""
    if kind == "Q":
        return f"{year}-{a * 3:02d}"
    if kind == "H":
        return f"{year}-{a * 6:02d}"
    if kind == "YTD":
        return f"{year}-{b * 3:02d}"
    if kind == "Y":
        return f"{year}-12"
    return _fmt(year, kind, a, b)


def _shift_quarter(year: int, q: int, delta: int) -> tuple[int, int]:
    n = year * 4 + (q - 1) + delta
    return n // 4, n % 4 + 1


def normalize_period(text: str, reporting_period: str | None = None, current: str | None = None,
                     as_at: bool = False) -> str | None:
    """Normalize a PERIOD text to 2024Q3 / 2024H1 / 2024 / 2024-09 / 2024Q1-Q3 / 2019-2024, or None.

    Relative expressions resolve against `current` (the period the sentence is about; defaults to the
    document's `reporting_period`): 同期 / 去年同期 = same period a year earlier, 上季度 = the quarter before,
    本季度 / 该季度 = the current quarter, 今年 / 全年 = its year, a yearless 三季度 / 9月 takes its year.
    Festivals give the quarter of their month (618 -> Q2, 双11 -> Q4); an event span (奥运期间) with no date lies in
    the current period. `as_at` (the span follows 截至) reads a quarter or half as its last month. Expressions
    that fix no calendar period (目前, 近期, 上线2周内) give None."""
    cur = current or reporting_period
    cy, ckind, ca, cb = _parse_rp(cur)
    t = _digits_for_dates(_strip(text))
    t = t.replace("第", "")

    # a filing's "截至2024年9月30日止三个月 / 六个月 / 九个月 / 年度"
    m = re.search(r"(\d{4})年(\d{1,2})月(?:\d{1,2}日)?止(\d{1,2})个月", t)
    if m:
        y, mon, n = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if n == 3 and mon % 3 == 0:
            return _fmt(y, "Q", mon // 3)
        if n == 6 and mon in (6, 12):
            return _fmt(y, "H", mon // 6)
        if n == 9 and mon == 9:
            return _fmt(y, "YTD", 1, 3)
        if n == 12 and mon == 12:
            return _fmt(y, "Y")
        return None
    m = re.search(r"(\d{4})年(12月31日)?止?年度", t)
    if m:
        return _fmt(int(m.group(1)), "Y")

    # multi-year ranges
    m = re.search(r"(\d{4})年?[-—~至到](\d{4})年?", t)
    if m:
        return f"{m.group(1)}-{m.group(2)}"

    # the year: explicit, relative, or the current one
    year = None
    m = re.search(r"(\d{4})(?:年|财年|财政年度)?", t) or re.search(r"[Ff][Yy](\d{4})", t)
    if m and 1990 <= int(m.group(1)) <= 2100:
        year = int(m.group(1))
    rel_year = 0
    if re.search(r"去年|上年|上一年|上一财年", t):
        rel_year = -1
    elif re.search(r"明年|下一年|来年", t):
        rel_year = 1
    elif re.search(r"前年", t):
        rel_year = -2

    # 同期: the current sub-period, a year before (or in the year written: 2023年同期)
    if "同期" in t:
        if cy is None or ckind in ("", "R"):
            return None
        y = year if year is not None else cy + (rel_year or -1)
        return _fmt(y, ckind, ca, cb)

    # quarters
    sub = None
    m = re.search(r"前([一二三四1-4])季度?", t) or re.search(r"([1-4])-([1-4])季度", t)
    if m:
        if m.re.pattern.startswith("前"):
            sub = ("YTD", 1, _QUARTER[m.group(1)])
        else:
            sub = ("YTD", int(m.group(1)), int(m.group(2)))
    if sub is None:
        m = re.search(r"上一?个?季度?(?!度末)|上一个季度", t)
        if m and not re.search(r"[一二三四1-4]季", t):
            if cy is None or ckind != "Q":
                return None
            y, q = _shift_quarter(cy, ca, -1)
            return _fmt(y, "Q", q) if not as_at else _as_at(y, "Q", q, 0)
    if sub is None:
        m = re.search(r"(?<!\d)([1-4])[Qq]|[Qq]([1-4])(?!\d)|([一二三四])季", t)  # 3Q24, 2024Q3, 三季度
        if m:
            q = int(m.group(1) or m.group(2) or _QUARTER[m.group(3)])
            sub = ("Q", q, 0)
            if re.search(r"季度?[末底]|季末", t):
                sub = ("M", q * 3, 0)
    if sub is None and re.search(r"(本|该|当|这一?|同一)季度?|本季", t):
        if ckind != "Q":
            return None
        sub = ("Q", ca, 0)
    # halves
    if sub is None:
        if re.search(r"上半年|[Hh]1|1[Hh]|中期", t):
            sub = ("H", 1, 0)
        elif re.search(r"下半年|[Hh]2|2[Hh]", t):
            sub = ("H", 2, 0)
    # months: 9月, 2024年6月30日, 6月底, 1-9月 (year to date), 前9个月
    if sub is None:
        m = re.search(r"(\d{1,2})-(\d{1,2})月", t) or re.search(r"前(\d{1,2})个月", t)
        if m:
            a, b = (1, int(m.group(1))) if m.re.pattern.startswith("前") else (int(m.group(1)), int(m.group(2)))
            if a == 1 and b % 3 == 0 and 3 <= b <= 12:
                sub = ("Y", 0, 0) if b == 12 else ("H", 1, 0) if b == 6 else ("YTD", 1, b // 3)
        if sub is None:
            m = re.search(r"(\d{1,2})月", t)
            if m and 1 <= int(m.group(1)) <= 12:
                sub = ("M", int(m.group(1)), 0)
    if sub is None and re.search(r"年[底末]", t):
        sub = ("M", 12, 0)
    if sub is None:
        for rx, mon in _FESTIVALS:
            if rx.search(t):
                sub = ("Q", (mon - 1) // 3 + 1, 0)  # a shopping festival is read as its quarter
                break

    if year is None:
        m = re.search(r"(?:[1-4][Qq]|[Qq][1-4])'?(\d{2})(?!\d)", t)  # 3Q24, Q3'24
        if m:
            year = 2000 + int(m.group(1))
    if year is None:
        if cy is None:
            return None
        year = cy + rel_year  # 今年 / 全年 / 三季度 take the current year, 去年 / 明年 shift it
    elif rel_year:
        year += rel_year

    if sub is None:
        explicit_year = bool(re.search(r"\d{4}|今年|本年|全年|年度|当年|年内|去年|上年|明年|前年|来年|本财年", t))
        if explicit_year:
            return _fmt(year, "Y") if not as_at else _as_at(year, "Y", 0, 0)
        # an event span (奥运期间, 大促期间) with no date: inside the current period
        if t.endswith("期间") and cur:
            return cur
        return None
    kind, a, b = sub
    if kind == "Y":
        return _fmt(year, "Y")
    if as_at:
        return _as_at(year, kind, a, b)
    return _fmt(year, kind, a, b)


def _is_absolute(text: str) -> bool:
    t = _digits_for_dates(_strip(text))
    return bool(re.search(r"(19|20)\d{2}", t)) and "同期" not in t


_DAY_DATE = re.compile(r"\d{4}\s*[-/.]\s*\d{1,2}\s*[-/.]\s*\d{1,2}|月\s*\d{1,2}\s*[日号]")


def reporting_period(text: str, spans) -> str | None:
    """The document's reporting period, from the explicit periods of its title and opening: the first PERIOD
    span that names a year (2024年第二季度, 2024年); a yearless quarter or half before it (the title's 二季度)
    refines a bare year. Without one, the first year written in the text (20XX年), else None."""
    # a day (2024-11-25, 11月25日) dates an event or the publication, never a reporting period
    periods = sorted((s for s in spans if s.label == "PERIOD" and not _DAY_DATE.search(s.text)),
                     key=lambda s: s.start)
    yearless = None
    for s in periods:
        if _is_absolute(s.text):
            p = normalize_period(s.text)
            if p is None:
                continue
            y, kind, _, _ = _parse_rp(p)
            if kind == "Y" and yearless is not None:
                refined = normalize_period(yearless.text, p)
                if refined and refined != p:
                    return refined
            return p
        # a yearless quarter or half (二季度): it resolves to a sub-period of any given year
        if yearless is None and normalize_period(s.text, "2000") not in (None, "2000"):
            yearless = s
    m = re.search(r"((?:19|20)\d{2})\s*年", normalize(text).text)
    return m.group(1) if m else None


# --------------------------------------------------------------------------------------------- segmentation

def _mentions(nt: NormalizedText, spans) -> list[_Mention]:
    out = []
    for s in spans:
        try:
            a, b = nt.span_to_normalized(s.start, s.end)
        except (ValueError, IndexError):
            continue
        out.append(_Mention(s.label, a, b, nt.text[a:b], s.start, s.end, nt.original[s.start:s.end]))
    out.sort(key=lambda m: (m.start, m.end))
    return out


def _split_clauses(text: str, start: int, end: int, table: bool) -> list[tuple[int, int]]:
    """Clause boundaries inside [start, end): commas (not the thousands comma of 1,100), colons, and table
    cell bars."""
    seps = ":|" if table else ":"
    out, a = [], start
    for i in range(start, end):
        ch = text[i]
        if ch in seps or ch == "，" or (ch == "," and not (text[i - 1:i].isdigit() and text[i + 1:i + 2].isdigit())):
            if i > a:
                out.append((a, i))
            a = i + 1
    if end > a:
        out.append((a, end))
    return out or [(start, end)]


# Numbered items inside a line (a Q&A answer's "1)游戏行业… 2)传媒行业…") start a new paragraph.
_INLINE_ITEM = re.compile(r"(?:(?<=[。:;!?])|(?<=^))\s*\d{1,2}\)(?!\d)", re.M)


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """Paragraphs: non-empty lines, cut again before in-line numbered items."""
    out = []
    pos = 0
    for line in text.split("\n"):
        a, b = pos, pos + len(line)
        pos = b + 1
        if not line.strip():
            continue
        cuts = [a] + [a + m.start() for m in _INLINE_ITEM.finditer(line) if m.start() > 0] + [b]
        for x, y in zip(cuts, cuts[1:]):
            if text[x:y].strip():
                out.append((x, y))
    return out


def _is_heading(nt: NormalizedText, a: int, b: int, first: bool) -> bool:
    """Titles and headings: the first line, markdown headings, `title:` front matter, lines all in bold, and
    short lines without sentence punctuation."""
    line = nt.text[a:b]
    oa, ob = nt.span_to_original(a, b) if b > a else (0, 0)
    oline = nt.original[oa:ob]
    return first or bool(_HEADING.match(line)) or oline.strip().startswith("#") or \
        bool(re.fullmatch(r"\s*\*\*.*\*\*\s*", oline)) or (len(line.strip()) <= 40 and not re.search(r"[。!?;]", line))


def _segment(nt: NormalizedText, mentions: list[_Mention]) -> list[_Sentence]:
    text = nt.text
    sentences: list[_Sentence] = []
    intro: int | None = None             # the sentence a following list continues (a line ending with ':')
    header: _Sentence | None = None      # the header row of the current table
    for pi, (a, b) in enumerate(_paragraphs(text)):
        line = text[a:b]
        is_table = line.count("|") >= 2
        if is_table and re.fullmatch(r"[\s|:\-]+", line):
            continue  # the |---|---| separator row
        if not is_table:
            header = None
        is_item = bool(_LIST_ITEM.match(line))
        heading = _is_heading(nt, a, b, pi == 0) and not is_item and not is_table
        bounds, sa = [], a
        for i in range(a, b):
            if text[i] in _SENT_END and not is_table:
                bounds.append((sa, i + 1))
                sa = i + 1
        bounds.append((sa, b))
        first_of_para = len(sentences)
        for sa, se in bounds:
            if not text[sa:se].strip():
                continue
            sent = _Sentence(sa, se, pi, _split_clauses(text, sa, se, is_table),
                             [m for m in mentions if sa <= m.start < se], heading=heading, table_row=is_table,
                             inherit=intro if is_item else None)
            if is_table:
                sent.cells = sent.clauses
                if header is None:
                    header = sent
                else:
                    sent.header = header
            sentences.append(sent)
        if not is_item:
            ends_intro = line.rstrip().endswith(":") and len(sentences) > first_of_para
            intro = len(sentences) - 1 if ends_intro else None
    return sentences


# --------------------------------------------------------------------------------------------- linking

def _clause_of(sent: _Sentence, pos: int) -> tuple[int, int]:
    for a, b in sent.clauses:
        if a <= pos < b:
            return a, b
    return sent.start, sent.end


def _between(text: str, a: int, b: int) -> str:
    return text[a:b] if b > a else ""


def _is_share_base(text: str, m: _Mention, sent: _Sentence) -> bool:
    """A METRIC that is the whole of a share (占[总营收]的56.5%, 占比[总电商GMV], 对[收入]的贡献占比)."""
    prev_end = _clause_of(sent, m.start)[0]
    for o in sent.mentions:
        if o.end <= m.start and o.label != "ENTITY" and o is not m:
            prev_end = max(prev_end, o.end)
    gap = _between(text, prev_end, m.start)
    # skip an ENTITY right before the base (占[快手应用][内循环总营销消耗]); "[到店客流量]中,有超过50%…" is the
    # whole the share is taken from
    return "占" in gap or bool(_SHARE_BASE_BEFORE.search(gap)) or bool(re.match(r"中,?有", text[m.end:m.end + 3]))


def _groups(text: str, items: list[_Mention], sent: _Sentence) -> list[list[_Mention]]:
    """Enumerations: consecutive mentions joined only by 、 和 及 与 以及 (in the same clause)."""
    groups: list[list[_Mention]] = []
    for m in items:
        if groups:
            last = groups[-1][-1]
            gap = _between(text, last.end, m.start)
            if re.fullmatch(r"\s*(、|和|及|与|以及|或|、以及)\s*", gap) and \
                    _clause_of(sent, last.start) == _clause_of(sent, m.start):
                groups[-1].append(m)
                continue
        groups.append([m])
    return groups


class _DocContext:
    """Everything a document's facts need: normalized text, mentions, sentences, reporting period."""

    def __init__(self, text: str, spans):
        self.nt = normalize(text)
        self.text = self.nt.text
        self.mentions = _mentions(self.nt, spans)
        self.sentences = _segment(self.nt, self.mentions)
        self.rp = reporting_period(text, spans)
        self.main_entity = self._main_entity()
        self.captions = [(m.start(), m.group(1), m.group(2)) for m in _CAPTION.finditer(self.text)
                         if m.group(1) or m.group(2)]

    def _main_entity(self) -> _Mention | None:
        """The most frequent ENTITY: each ENTITY text counted over the whole text, annotated or not (快手 also
        counts inside 快手应用), ties to the first mentioned."""
        ents = [m for m in self.mentions if m.label == "ENTITY"]
        if not ents:
            return None
        counts = Counter()
        for m in ents:
            counts[m.text] = self.text.count(m.text)
        best = max(counts, key=lambda k: (counts[k], -next(i for i, e in enumerate(ents) if e.text == k)))
        same = [m for m in ents if m.text == best]
        # the original text most often written for it
        otexts = Counter(m.otext for m in same)
        top = otexts.most_common(1)[0][0]
        return next(m for m in same if m.otext == top)


def _period_info(ctx: _DocContext, p: _Mention, current: str | None) -> str | None:
    before = ctx.text[max(0, p.start - 4):p.start]
    as_at = bool(re.search(r"(截至|截止)到?$", before)) and "止" not in p.text
    return normalize_period(p.text, ctx.rp, current=current, as_at=as_at)


def _is_base_period(ctx: _DocContext, p: _Mention) -> bool:
    before = ctx.text[max(0, p.start - 4):p.start]
    return bool(_BASE_BEFORE.search(before)) or bool(_RELATIVE_BASE.search(p.text))


def _bound_to_value(ctx: _DocContext, p: _Mention, sent: _Sentence) -> bool:
    """P的V / PV: a period written right before one value scopes that value only."""
    nxt = next((m for m in sent.mentions if m.start >= p.end), None)
    return nxt is not None and nxt.label == "VALUE" and re.fullmatch(r"的?", ctx.text[p.end:nxt.start]) is not None


def _sentence_scope(ctx: _DocContext, sent: _Sentence) -> _Mention | None:
    """The period a sentence is about (carried to the next sentences): its first PERIOD that is neither a
    comparison base nor bound to a single value."""
    for p in sent.mentions:
        if p.label == "PERIOD" and not _is_base_period(ctx, p) and not _bound_to_value(ctx, p, sent):
            return p
    return None


# --------------------------------------------------------------------------------------------- the builder

def build_facts(text: str | None, spans=None, doc=None) -> list[Fact]:
    """One Fact per VALUE span, in text order. `doc` (a Document) may stand in for `text` and `spans`."""
    if text is None and doc is not None:
        text, spans = doc.text, doc.spans
    if text is None:
        raise ValueError("build_facts needs the document text")
    ctx = _DocContext(text, list(spans or []))
    facts: list[Fact] = []
    paras: dict[int, dict] = {}     # paragraph -> what it carries: entity (mention, sentence index), period
    ends: list[dict] = []           # per sentence: the carried state after it (list items start from it)
    for si, sent in enumerate(ctx.sentences):
        if sent.para not in paras:
            start = ends[sent.inherit] if sent.inherit is not None else None
            paras[sent.para] = {"entity": (start["entity"][0], si - 1) if start and start["entity"] else None,
                                "period": start["period"] if start else None, "metric": None}
        para = paras[sent.para]
        values = [m for m in sent.mentions if m.label == "VALUE"]
        sent_facts: list[Fact] = []
        used_entities: list[_Mention] = []
        consumed: set[int] = set()      # METRICs taken by a value before them (超5100万个[视频])
        for group in _groups(ctx.text, values, sent):
            parsed = [_safe_parse(v) for v in group]
            _share_units(parsed)
            for gi, v in enumerate(group):
                if parsed[gi] is None:
                    continue
                f, ent = _build_one(ctx, sent, si, v, parsed[gi], group, gi, para, consumed)
                sent_facts.append(f)
                if ent is not None:
                    used_entities.append(ent)
        facts.extend(sent_facts)
        # what the sentence carries to the next ones of its paragraph
        ents = [m for m in sent.mentions if m.label == "ENTITY" and not _is_locative(ctx, m, sent)]
        if ents:
            para["entity"] = (ents[-1], si)
        elif used_entities:
            para["entity"] = (used_entities[-1], si)
        scope = _sentence_scope(ctx, sent)
        # a forecast's period is never carried to the actual figures after it
        if scope is not None and not _FORECAST.search(ctx.text[sent.start:scope.start]):
            para["period"] = scope
        ends.append(dict(para))
    return facts


def _share_units(parsed: list[ParsedValue | None]) -> None:
    """A bare numeral in an enumeration takes the unit and scale of a later member (5.2及3.8个百分点)."""
    for i, pv in enumerate(parsed):
        if pv is not None and pv.unit is None and pv.scale == 1.0:
            nxt = next((u for u in parsed[i + 1:] if u is not None and u.unit is not None), None)
            if nxt is not None:
                pv.unit, pv.scale, pv.currency = nxt.unit, nxt.scale, nxt.currency
                pv.value = pv.number * (nxt.value / nxt.number if nxt.number else nxt.scale)


def _safe_parse(v: _Mention) -> ParsedValue | None:
    try:
        return parse_value(v.text)
    except ValueError:
        return None


def _is_locative(ctx: _DocContext, e: _Mention, sent: _Sentence) -> bool:
    """Kwai在[巴西]的日活跃用户: an ENTITY after 在 that follows another ENTITY names a market, not the owner."""
    prev = [m for m in sent.mentions if m.end <= e.start]
    if not prev or prev[-1].label != "ENTITY":
        return False
    return ctx.text[prev[-1].end:e.start] == "在"


def _build_one(ctx: _DocContext, sent: _Sentence, si: int, v: _Mention, pv: ParsedValue, group: list[_Mention],
               gi: int, para: dict, consumed: set[int]) -> tuple[Fact, _Mention | None]:
    text = ctx.text
    ca, cb = _clause_of(sent, v.start)
    first, last = group[0], group[-1]
    # the words since the previous value of the clause (or the clause start), before the group
    prev_vals = [m for m in sent.mentions if m.label == "VALUE" and m.end <= first.start and m.start >= ca]
    local_a = max(ca, prev_vals[-1].end) if prev_vals else ca
    pre_local = text[local_a:first.start]
    nxt_val = next((m for m in sent.mentions if m.label == "VALUE" and m.start >= last.end), None)
    post_end = min(cb, nxt_val.start) if nxt_val is not None else cb
    post = text[last.end:post_end]
    # share cues may sit in earlier clauses with no value of their own (员工占比最高，达65.6%)
    prev_in_sent = [m for m in sent.mentions if m.label == "VALUE" and m.end <= first.start]
    share_a = prev_in_sent[-1].end if prev_in_sent else sent.start
    share_pre = text[share_a:first.start]
    cell_header = _header_cell(ctx, sent, v) if sent.table_row else ""

    # ---- qualifier
    qualifier = pv.qualifier
    if qualifier is None:
        m = _Q_BEFORE.search(text[max(ca, v.start - 6):v.start])
        if m:
            qualifier = _qualifier_word(m.group(1))

    # ---- metric
    metric = _link_metric(ctx, sent, v, pv, group, gi, consumed)
    if metric is None:
        metric = para.get("metric")  # a figure whose quantity is only implied repeats the last one
    para["metric"] = metric

    # ---- unit
    unit = pv.unit
    value = pv.value
    if unit is None:
        cap = _caption_for(ctx, v) if pv.scale == 1.0 else None
        if cap is not None:
            cur, scale = cap
            unit, value = cur, pv.number * scale
        elif metric is not None and _MONEY_METRIC.search(metric.text) and not _COUNT_METRIC.search(metric.text):
            unit = "CNY"
        else:
            unit = "count"
    # 是Y的X倍 is a ratio: the growth multiple is X-1 (guideline decision 21: 是…的2倍以上 -> 1.0 '>')
    if unit == "times" and re.search(r"是[^,]*的$", pre_local):
        value = value - 1.0

    # ---- change or level, measure, direction
    measure, direction = _measure(ctx, sent, v, group, gi, pv, unit, pre_local, post, share_pre, cell_header)

    # ---- period
    period, period_m = _link_period(ctx, sent, v, measure, para, pre_local)

    # ---- entity
    entity_m = _link_entity(ctx, sent, si, v, para)

    # ---- modality
    sent_pre = text[sent.start:v.start]
    modality = "estimate" if _ESTIMATE.search(sent_pre) else "forecast" if _FORECAST.search(sent_pre) else "actual"

    used = [v] + [m for m in (entity_m, metric, period_m) if m is not None]
    so, se = ctx.nt.span_to_original(sent.start, sent.end) if sent.end > sent.start else (v.ostart, v.oend)
    evidence = {"sentence": ctx.nt.original[so:se], "sentence_span": [so, se],
                "spans": sorted([m.ostart, m.oend, m.label] for m in used)}
    return Fact(value_span=[v.ostart, v.oend], value_text=v.otext,
                entity=entity_m.otext if entity_m is not None else None,
                metric=metric.otext if metric is not None else None,
                period=period, period_text=period_m.otext if period_m is not None else None,
                measure=measure, value=float(value), unit=unit, qualifier=qualifier, direction=direction,
                modality=modality, evidence=evidence), entity_m


def _header_bounds(sent: _Sentence, v: _Mention) -> tuple[int, int] | None:
    """For a table cell, the bounds of the header row's cell of the same column."""
    if sent.header is None:
        return None
    idx = next((i for i, (a, b) in enumerate(sent.cells) if a <= v.start < b), None)
    if idx is None or idx >= len(sent.header.cells):
        return None
    return sent.header.cells[idx]


def _header_cell(ctx: _DocContext, sent: _Sentence, v: _Mention) -> str:
    """For a table cell, the header row's cell of the same column (its text)."""
    hb = _header_bounds(sent, v)
    return ctx.text[hb[0]:hb[1]] if hb else ""


def _header_metric(ctx: _DocContext, sent: _Sentence, v: _Mention, spanless: bool = False) -> _Mention | None:
    """The METRIC of the header cell above a table cell. With `spanless`, when that cell has no mention at
    all (headers have no sentence around them, so a model often misses them), the cell's own text stands in,
    without the change or share word that `_measure` reads from the header (`| 转化效果提升 |` -> 转化效果,
    `| 收入占比 |` -> 收入, a share); None for a generic header (数值, 指标), a number or a period."""
    hb = _header_bounds(sent, v)
    if hb is None:
        return None
    a, b = hb
    found = next((m for m in sent.header.mentions if m.label == "METRIC" and a <= m.start < b), None)
    if found is not None or not spanless or any(a <= m.start < b for m in sent.header.mentions):
        return found
    m = _HEADER_TEXT.fullmatch(ctx.text, a, b)
    if m is None or not m.group(1) or re.search(r"\d", m.group(1)) or _GENERIC_HEADER.fullmatch(m.group(1)) \
            or normalize_period(m.group(1), "2000Q1"):
        return None
    ha, hb_ = m.span(1)
    oa, ob = ctx.nt.span_to_original(ha, hb_)
    return _Mention("METRIC", ha, hb_, m.group(1), oa, ob, ctx.nt.original[oa:ob])


# A header cell's metric: its text without blanks, markdown emphasis, a unit note and a trailing change or share
# word (the words `_HEADER_CUE` lets `_measure` read from the header).
_HEADER_WORD = r"(?:同比|环比)?(?:增长率|增长|增幅|增速|提升|提高|上升|下降|降幅|减少|变化|变动)|同比|环比|占比"
_HEADER_TEXT = re.compile(r"[\s*]*(.*?)[\s*]*(?:[(（][^()（）]*[)）])?[\s*]*(?:" + _HEADER_WORD +
                          r")?[\s*]*(?:[(（][^()（）]*[)）])?[\s*]*")
_HEADER_CUE = re.compile(r"同比|环比|变化|变动")  # change words of a header that `_CHANGE_VERB` does not know
_GENERIC_HEADER = re.compile(r"数值|数据|指标|金额|数量|备注|说明|项目|类别|类型|名称|情况")


# Bare head nouns: a figure's METRIC of this kind gives way to a business line named apart from it
# (**线上营销服务**：收入… -> 线上营销服务), unless the line is what the head already means (电商业务：GMV).
_GENERIC_METRIC = re.compile(r"(日均|月均|单月|总|整体)?(收入|营收|GMV|消耗|利润|流水|销售额|成交额|交易额)")
_HEAD_IMPLIES = {"GMV": re.compile(r"电商")}


def _link_metric(ctx: _DocContext, sent: _Sentence, v: _Mention, pv: ParsedValue, group: list[_Mention],
                 gi: int, consumed: set[int]) -> _Mention | None:
    text = ctx.text
    ca, cb = _clause_of(sent, v.start)
    metrics = [m for m in sent.mentions if m.label == "METRIC" and not _is_share_base(text, m, sent)]
    lo = ca if sent.table_row else sent.start
    before = [m for m in metrics if lo <= m.start and m.end <= v.start and m.start not in consumed]
    in_clause_before = [m for m in before if m.start >= ca]
    # the METRIC right after the value (超13.5万人次到场观看, 超5000万的播放) when the clause names none before
    # it, or when the value counts it (累计生成超5100万个视频: guideline decision 25); in
    # "约65%的从业人员采用灵活就业模式" the first is the base of the share and the second its part
    after = next((m for m in sent.mentions if m.start >= group[-1].end), None)
    if (not in_clause_before or pv.counter) and after is not None and after.label == "METRIC" and \
            after.start < cb and re.fullmatch(r"的?", text[v.end:after.start]) is not None and \
            after.start not in consumed:
        nxt = next((m for m in sent.mentions if m.start >= after.end), None)
        if pv.unit == "%" and nxt is not None and nxt.label == "METRIC" and nxt.start == after.end:
            after = nxt
        consumed.add(after.start)
        return after
    if before:
        mgroups = _groups(text, before, sent)
        if len(group) > 1:
            for mg in reversed(mgroups):
                if len(mg) == len(group):
                    return mg[gi]
        # a single value after an enumeration of metrics (A以及B环比均提升200%) takes the first conjunct
        chosen = mgroups[-1][0] if len(group) == 1 else mgroups[-1][-1]
        return _business_line(ctx, sent, chosen) or chosen
    if sent.table_row:
        hm = _header_metric(ctx, sent, v)
        if hm is not None:
            return hm
    later = [m for m in metrics if v.end <= m.start < cb and m.start not in consumed]
    if later:
        return later[0]
    return _header_metric(ctx, sent, v, spanless=True) if sent.table_row else None


def _business_line(ctx: _DocContext, sent: _Sentence, head: _Mention) -> _Mention | None:
    """For a bare head METRIC (收入, GMV, 日均消耗), the earlier METRIC of the sentence that names its business
    line and has no figure of its own (decision 16 of the guideline), else None."""
    m = _GENERIC_METRIC.fullmatch(head.text)
    if not m:
        return None
    for cand in reversed([x for x in sent.mentions if x.label == "METRIC" and x.end <= head.start]):
        if _is_share_base(ctx.text, cand, sent):
            continue
        if _GENERIC_METRIC.fullmatch(cand.text):  # a bare head (a heading 收入 over 集团总收入) names no line
            return None
        # the business line has no figure of its own: no VALUE in its clause or between it and the head
        ca, cb = _clause_of(sent, cand.start)
        if any(x.label == "VALUE" and (ca <= x.start < cb or cand.end <= x.start < head.start)
               for x in sent.mentions):
            return None
        implied = _HEAD_IMPLIES.get(m.group(2))
        if implied is not None and implied.search(cand.text):
            return None
        return cand
    return None


def _caption_for(ctx: _DocContext, v: _Mention) -> tuple[str, float] | None:
    """A filing's unit caption, (人民币百万元), before a bare number in the same block (1,500 characters)."""
    best = None
    for pos, cur, scale in ctx.captions:
        if pos < v.start and v.start - pos <= 1500:
            best = (cur, scale)
    if best is None:
        return None
    cur, scale = best
    code = {"人民币": "CNY", "美元": "USD", "港元": "HKD", "港币": "HKD"}.get(cur or "", "CNY")
    return code, _SCALES.get(scale or "", 1.0)


def _measure(ctx: _DocContext, sent: _Sentence, v: _Mention, group: list[_Mention], gi: int, pv: ParsedValue,
             unit: str, pre_local: str, post: str, share_pre: str, cell_header: str) -> tuple[str, str | None]:
    text = ctx.text
    ca, cb = _clause_of(sent, v.start)
    # the last change verb and the last level marker before the value; 增长分别为 keeps the change, 提升至 and
    # 增长15%至… make a level
    verb = None
    for m in _CHANGE_VERB.finditer(pre_local):
        verb = m
    level_after = None
    for m in _LEVEL_AFTER.finditer(pre_local):
        level_after = m
    is_change = False
    if verb is not None:
        is_change = True
        if level_after is not None and level_after.start() >= verb.end():
            # 增长达30% is still the change; 提升至 / 增长…达到 give the level
            gap = pre_local[verb.end():level_after.start()]
            is_change = level_after.group(0).startswith("达") and gap == "" and verb.group(0) != "提升"
    post_change = _POST_CHANGE.match(post)
    after_metric_post = post
    # a table cell "72%销量增长": the cue after the following METRIC
    if not post_change and sent.table_row:
        m2 = re.match(r"^[^|,]*?(增长|提升|下降|减少|增加)", post)
        if m2 and "占" not in post[:m2.start()]:
            post_change = m2
            after_metric_post = post[m2.start():]
    if post_change:
        is_change = True
        verb = verb or post_change
    if unit in ("times", "pp") or re.search(r"翻", v.text):
        is_change = True
    header_verb = None
    # a table cell with no cue and no METRIC of its own reads its column header (| 转化效果提升 | … | 37% |)
    own_metric = any(m.label == "METRIC" and ca <= m.start < cb for m in sent.mentions)
    if sent.table_row and not is_change and not own_metric and not _SHARE.search(pre_local + post) and cell_header:
        header_verb = _CHANGE_VERB.search(cell_header)
        if header_verb or _HEADER_CUE.search(cell_header):
            is_change = True

    if not is_change:
        # 占…/占比/贡献 since the previous value (员工占比最高，达65.6%) or in the value's clause (其占总收入的
        # 比例从…的40.4%下降至本季度31.1%), "到店客流量中,有超过50%…", "约65%的从业人员…"
        share = bool(_SHARE.search(share_pre)) or bool(_SHARE.search(text[ca:v.start])) or \
            bool(re.search(r"中,?有$", share_pre)) or \
            bool(re.match(r"^的?(\S{0,20}?)占比", post) and sent.table_row) or \
            (sent.table_row and not own_metric and "占比" in cell_header) or \
            (post.startswith("的") and _next_is_metric(sent, group[-1]) and pv.unit == "%")
        if share and unit == "%":
            return "share", None
        return "level", None

    # ---- which base: 同比 / 环比 / a stated base period / another base
    measure = None
    # enumerated measure words: 同比、环比分别提升5.2及3.8个百分点 (the i-th word to the i-th value)
    cues = re.findall(r"(同比|环比|按年|按季)", pre_local)
    if len(group) > 1 and len(cues) == len(group) and re.search(r"(同比|环比|按年|按季)(、|和|及)", pre_local):
        measure = _MEASURE_WORD[cues[gi]]
    clause_pre = text[ca:v.start]
    if measure is None:
        for chunk in (pre_local, clause_pre, after_metric_post[:12], cell_header):
            y = [m.end() for m in _YOY.finditer(chunk)]
            q = [m.end() for m in _QOQ.finditer(chunk)]
            if y or q:
                measure = "yoy" if (max(y) if y else -1) > (max(q) if q else -1) else "qoq"
                break
    if measure is None:
        measure = _base_measure(ctx, sent, v, clause_pre)
    if measure is None:
        if unit not in ("%", "pp", "times"):
            # an absolute amount added with no base (带动关联岗位增加2.3个) is the level of what was added
            return "level", None
        # a headline's bare growth restates the period's result (快手二季度净利润增超七成): yoy
        measure = "yoy" if sent.heading else "change"
    # direction from the verb (or the header's verb in tables), the sign, 降幅
    vt = verb.group(0) if verb is not None else (header_verb.group(0) if header_verb else "")
    direction = "down" if _DOWN.search(vt) or pv.sign == "-" else "up"
    if not vt and re.search(r"降幅|跌幅|减幅|下降|减少", pre_local):
        direction = "down"
    return measure, direction


def _next_is_metric(sent: _Sentence, v: _Mention) -> bool:
    nxt = next((m for m in sent.mentions if m.start >= v.end), None)
    return nxt is not None and nxt.label == "METRIC"


def _base_measure(ctx: _DocContext, sent: _Sentence, v: _Mention, clause_pre: str) -> str | None:
    """较 / 相比 / 由 + a PERIOD: a relative base (去年同期, 2023年同期, 上季度) gives yoy or qoq; an explicitly
    dated base (较2023年) or a base that is no period (较1.5版本) gives change (guideline decision 22)."""
    ca, _ = _clause_of(sent, v.start)
    bases = [p for p in sent.mentions if p.label == "PERIOD" and p.end <= v.start and p.start >= ca
             and _is_base_period(ctx, p)]
    if bases:
        t = _strip(bases[-1].text)
        if re.search(r"上一?个?季", t):
            return "qoq"
        if "同期" in t or re.fullmatch(r"(去年|上年|上一年)", t):
            return "yoy"
        return "change"
    if re.search(r"(较|相比|相较|比|对比)", clause_pre):
        return "change"
    return None


def _link_period(ctx: _DocContext, sent: _Sentence, v: _Mention, measure: str, para: dict,
                 pre_local: str) -> tuple[str | None, _Mention | None]:
    text = ctx.text
    periods = [p for p in sent.mentions if p.label == "PERIOD"]
    values = [m for m in sent.mentions if m.label == "VALUE"]
    before = [p for p in periods if p.end <= v.start]
    is_change = measure not in ("level", "share")
    if is_change:
        before = [p for p in before if not _is_base_period(ctx, p)]
    # 从之前的12%提升到35%, 从300万元增长到2200万元: the starting value of an unnamed earlier time
    post = text[v.end:_clause_of(sent, v.start)[1]]
    if not is_change and re.search(r"(从|由)(?!于)[^,]*$", pre_local) and \
            not any(p.start >= v.start - len(pre_local) for p in before) and \
            re.match(r"(增长|增加|提升|提高|上升|下降|减少|降低|下滑|降|升|增)?(到|至)", post):
        return None, None
    current = _current_period(ctx, sent, para)
    if before:
        p = before[-1]
        if not any(p.end <= m.start and m.end <= v.start for m in values if m is not v):
            return _period_info(ctx, p, current), p
        # a value after other values: the nearest period that scopes more than one value
        for q in reversed(before):
            if not _bound_to_value(ctx, q, sent) and not _is_base_period(ctx, q):
                return _period_info(ctx, q, current), q
    if is_change:
        # 由2023年同期的143亿元增加22.1%至2024年第二季度的175亿元: the change belongs to the end period
        ca, cb = _clause_of(sent, v.start)
        m = next((p for p in periods if v.end <= p.start < cb and re.search(r"(至|到)$", text[p.start - 1:p.start])),
                 None)
        if m is not None:
            return _period_info(ctx, m, current), m
    carried = para.get("period")
    if carried is not None:
        return _period_info(ctx, carried, current), carried
    return ctx.rp, None


def _current_period(ctx: _DocContext, sent: _Sentence, para: dict) -> str | None:
    """The period relative expressions of a sentence resolve against (同期 = a year before it): the sentence's
    scope period, else the one carried through the paragraph, else the reporting period."""
    scope = _sentence_scope(ctx, sent) or para.get("period")
    if scope is not None and not _RELATIVE_BASE.search(scope.text):
        p = _period_info(ctx, scope, ctx.rp)
        if p is not None:
            return p
    return ctx.rp


def _link_entity(ctx: _DocContext, sent: _Sentence, si: int, v: _Mention, para: dict) -> _Mention | None:
    ents = [m for m in sent.mentions if m.label == "ENTITY" and not _is_locative(ctx, m, sent)]
    before = [m for m in ents if m.end <= v.start]
    if before:
        return before[-1]
    ca, cb = _clause_of(sent, v.start)
    after = [m for m in ents if v.end <= m.start < cb]
    if after:
        return after[0]
    carried = para.get("entity")
    # the previous sentences' entity, if it was named (or used) no more than two sentences back
    if carried is not None and si - carried[1] <= 2:
        return carried[0]
    return ctx.main_entity


# --------------------------------------------------------------------------------------------- scoring

SCORED_FIELDS = ("entity", "metric", "period", "measure", "value", "unit", "qualifier", "direction", "modality")
MATCH_FIELDS = ("entity", "metric", "period", "measure", "value", "unit")


def _as_dict(f) -> dict:
    return f.to_dict() if hasattr(f, "to_dict") else dict(f)


def _norm_text(s: str | None) -> str | None:
    if s is None:
        return None
    return normalize(s).text.replace(" ", "")


def field_equal(name: str, a, b) -> bool:
    if name in ("entity", "metric"):
        return _norm_text(a) == _norm_text(b)
    if name == "value":
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)
    return a == b


def score_facts(pred_facts, gold_facts) -> dict:
    """Fact-level precision/recall/F1 (a fact is right when entity, metric, period, measure, value and unit all
    equal, entity/metric compared on the normalized Simplified view, value with relative tolerance 1e-6) and
    each field's accuracy over the VALUE spans both sides have a fact for."""
    pred = {tuple(_as_dict(f)["value_span"]): _as_dict(f) for f in pred_facts}
    gold = {tuple(_as_dict(f)["value_span"]): _as_dict(f) for f in gold_facts}
    correct = 0
    field_hits = Counter()
    matched = 0
    for key, g in gold.items():
        p = pred.get(key)
        if p is None:
            continue
        matched += 1
        ok = True
        for name in SCORED_FIELDS:
            eq = field_equal(name, p.get(name), g.get(name))
            field_hits[name] += eq
            if name in MATCH_FIELDS and not eq:
                ok = False
        correct += ok
    precision = correct / len(pred) if pred else 0.0
    recall = correct / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "correct": correct, "pred": len(pred),
            "gold": len(gold), "matched": matched,
            "fields": {n: (field_hits[n] / matched if matched else 0.0) for n in SCORED_FIELDS}}


def fact_errors(pred_facts, gold_facts) -> list[tuple[list[int], str, str, object, object]]:
    """(value_span, value_text, field, predicted, gold) for every scored field that differs."""
    pred = {tuple(_as_dict(f)["value_span"]): _as_dict(f) for f in pred_facts}
    out = []
    for g in map(_as_dict, gold_facts):
        p = pred.get(tuple(g["value_span"]))
        if p is None:
            out.append((g["value_span"], g["value_text"], "missing", None, None))
            continue
        for name in SCORED_FIELDS:
            if not field_equal(name, p.get(name), g.get(name)):
                out.append((g["value_span"], g["value_text"], name, p.get(name), g.get(name)))
    return out
