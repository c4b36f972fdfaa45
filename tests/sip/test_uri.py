"""uri.py: SIP URIs, name-addresses and parameter lists, read liberally where RFC 3261 allows it and
refused (UriError, a one-line reason) where it does not."""

from __future__ import annotations

import pytest

from swml_engine.transports.sip.uri import (
    SHOWN,
    NameAddr,
    Uri,
    UriError,
    parse_name_addr,
    parse_params,
    parse_uri,
    shown,
    split_list,
)


def test_a_sip_uri_is_taken_apart() -> None:
    uri = parse_uri("sips:alice:secret@Example.COM:5061;transport=TCP;lr?subject=hi&x=y")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sips", "alice", "secret", "example.com", 5061)
    assert uri.params == (("transport", "TCP"), ("lr", None))
    assert uri.param("LR") == "" and uri.has_param("lr") and uri.transport == "tcp"
    assert uri.headers == "subject=hi&x=y"
    assert str(uri) == "sips:alice:secret@example.com:5061;transport=TCP;lr?subject=hi&x=y"


def test_user_parts_may_hold_what_parameters_and_headers_may_not() -> None:
    # RFC 4475 §3.1.1.2 and §3.1.1.9: '?', ';', ',' and '/' belong to the user part before the '@'
    uri = parse_uri("sip:odd?user;par=u%40x,/y:pw&1@example.org;maddr=192.0.2.1?h=v")
    assert (uri.user, uri.password, uri.host) == ("odd?user;par=u%40x,/y", "pw&1", "example.org")
    assert uri.params == (("maddr", "192.0.2.1"),) and uri.headers == "h=v"


def test_escapes_are_kept_as_written() -> None:
    uri = parse_uri("sip:%61lice%00@example.org;%6C%72")
    assert uri.user == "%61lice%00" and uri.params == (("%6C%72", None),)


def test_ipv6_hosts_and_ports() -> None:
    uri = parse_uri("sip:bob@[2001:DB8::1]:5070")
    assert (uri.host, uri.port, uri.host_port) == ("2001:db8::1", 5070, "[2001:db8::1]:5070")
    assert parse_uri("sip:example.org.").host == "example.org."


def test_other_schemes_are_kept_whole() -> None:
    assert parse_uri("tel:+1-555-0100;phone-context=example.org") == Uri(
        scheme="tel", opaque="+1-555-0100;phone-context=example.org"
    )
    assert not parse_uri("urn:service:sos").is_sip
    assert str(parse_uri("HTTP://www.example.org/x")) == "http://www.example.org/x"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("<sip:a@b>", "not a URI"),
        ("sip:a@example.org; lr", "spaces"),
        ('sip:"a"@example.org', "quotes"),
        ("sip:@example.org", "empty user"),
        ("sip:a@", "no host"),
        ("sip:a@exa mple.org", "spaces"),
        ("sip:a@-bad-.org", "not a host"),
        ("sip:a@[::1", "IPv6"),
        ("sip:a@example.org:0", "port"),
        ("sip:a@example.org:70000", "port"),
        ("sip:a@example.org:50x", "port"),
        ("tel:", "nothing after the scheme"),
        ("1sip:a@b", "not a URI"),
        ("sip:a@example.org;=x", "not a parameter"),
        ("sip:" + "a" * 9000 + "@example.org", "at most 8192"),
    ],
)
def test_unreadable_uris_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(UriError, match=why):
        parse_uri(text)


def test_name_addresses_in_every_form() -> None:
    quoted = parse_name_addr('"Alice \\"A\\" Smith" <sip:alice@example.org>;tag=88;x')
    assert quoted == NameAddr(parse_uri("sip:alice@example.org"), 'Alice "A" Smith', (("tag", "88"), ("x", None)))
    assert quoted.tag == "88"
    tokens = parse_name_addr("Alice   Smith<sip:alice@example.org>")
    assert tokens.display == "Alice Smith"
    bare = parse_name_addr("sip:alice@example.org;tag=1")  # no brackets: ;params are the header's
    assert bare.uri.params == () and bare.tag == "1" and not bare.bracketed
    inner = parse_name_addr("<sip:alice@example.org;tag=1>")  # in brackets: the URI's
    assert inner.uri.params == (("tag", "1"),) and inner.tag is None
    assert str(quoted) == '"Alice \\"A\\" Smith" <sip:alice@example.org>;tag=88;x'


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('"Alice <sip:alice@example.org>', "does not end"),  # RFC 4475 §3.1.2.6
        ("Smith, Alice <sip:alice@example.org>", "in quotes"),  # RFC 4475 §3.1.2.15
        ('"A" B <sip:alice@example.org>', "between the display name"),
        ("< sip:alice@example.org >", "spaces inside"),  # RFC 4475 §3.1.2.14
        ("<sip:alice@example.org", "without '>'"),
        ("<sip:a@example.org>, <sip:b@example.org>", "one address here"),  # two To values in one
        ("<sip:a@example.org> junk;tag=1", "one address here"),
        ("sip:a@example.org?Route=x", "written in '<>'"),  # RFC 4475 §3.1.2.13
        ('"Alice" sip:alice@example.org', "needs the URI in '<>'"),
        ("<sip:a@example.org>;tag=a b", "must be quoted"),
        ("<sip:a@example.org>;t@g=1", "not a parameter"),
    ],
)
def test_unreadable_name_addresses_are_refused(text: str, why: str) -> None:
    with pytest.raises(UriError, match=why):
        parse_name_addr(text)


def test_parameters_take_spaces_around_separators_and_skip_empty_items() -> None:
    # RFC 4475 §3.1.1.1 (spaces), §3.1.2.1 (";;" is answerable: skipped)
    assert parse_params(" ;  tag = 5f ;; lr ; q=0.5;") == (("tag", "5f"), ("lr", None), ("q", "0.5"))
    assert parse_params(';name="a; b, <c>";x=[2001:db8::1]') == (("name", '"a; b, <c>"'), ("x", "[2001:db8::1]"))


def test_lists_split_outside_quotes_and_brackets() -> None:
    assert split_list('"Doe, J" <sip:a@b;x=1,2>, <sip:c@d> , ,e') == ['"Doe, J" <sip:a@b;x=1,2>', "<sip:c@d>", "e"]
    assert split_list("INVITE,ACK ,BYE") == ["INVITE", "ACK", "BYE"]
    assert split_list('"a \\" , b", c') == ['"a \\" , b"', "c"]


def test_errors_repeat_little_of_the_peers_text() -> None:
    assert len(shown("x" * 500)) == SHOWN
    assert shown("a\r\n\tb\x00c\x07") == "a b?c?"
    with pytest.raises(UriError) as caught:
        parse_name_addr('"' + "y" * 5000)
    assert "y" * (SHOWN + 1) not in str(caught.value)
