"""Resolvers a compiled plan calls directly, as Strawberry's own wrapper calls them.

Strawberry wraps every resolver in a function that, on each call, converts the arguments
from graphql-core's values to Python ones by walking the argument types afresh (names
converted, annotations resolved: ~13% of a reservation's server CPU), then decides which
of `self`, `root`, `parent` and `info` the resolver takes. For a field with nothing else
in its wrapper (no extensions, so no permission classes), all of that is decided here
once per field, and each argument's conversion is kept as a closure: the same values
reach the same resolver. A type this does not convert itself (a `Maybe`, a GlobalID, an
input type with its own `from_input`, a lazy type) is converted by Strawberry's own
`convert_argument`, so every field can be called directly. (The service's schema sets
no exception handlers, which would also live in Strawberry's wrapper.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING
from typing import Any, cast

import strawberry
from graphql import GraphQLResolveInfo
from strawberry.scalars import is_scalar
from strawberry.types.arguments import convert_argument
from strawberry.types.base import (
    StrawberryList,
    StrawberryMaybe,
    StrawberryObjectDefinition,
    StrawberryOptional,
    has_object_definition,
)
from strawberry.types.enum import StrawberryEnumDefinition
from strawberry.types.field import StrawberryField
from strawberry.types.unset import UNSET

from inventory_graphql.api.internals import strawberry_info

Converter = Callable[[Any, Any], Any]  # (graphql-core's value, Strawberry's Info) -> Python
DirectResolver = Callable[[Any, GraphQLResolveInfo[Any], dict[str, Any]], Any]


def direct_resolvers(schema: strawberry.Schema) -> dict[tuple[str, str], DirectResolver]:
    """(type, field) -> a direct call of every field whose wrapper does nothing else."""
    resolvers = {}
    names = schema.config.name_converter
    for type_name in schema.schema_converter.type_map:
        definition = schema.get_type_by_name(type_name)
        if not isinstance(definition, StrawberryObjectDefinition) or definition.is_input:
            continue
        for field in definition.fields:
            if field.base_resolver is not None and not field.extensions:
                resolvers[type_name, names.from_field(field)] = _direct(schema, field)
    return resolvers


def _direct(schema: strawberry.Schema, field: StrawberryField) -> DirectResolver:
    names = schema.config.name_converter
    arguments = [
        (
            names.from_argument(a),
            a.python_name,
            _converter(schema, a.type, (names.from_argument(a),)),
        )
        for a in field.arguments
    ]
    resolver = field.base_resolver
    assert resolver is not None
    takes_self = resolver.self_parameter is not None
    source_names = [
        p.name for p in (resolver.parent_parameter, resolver.root_parameter) if p is not None
    ]
    info_name = resolver.info_parameter.name if resolver.info_parameter else None
    call = cast(Callable[..., Any], resolver.wrapped_func)  # what StrawberryResolver calls

    def direct(source: Any, raw: GraphQLResolveInfo[Any], values: dict[str, Any]) -> Any:
        info = strawberry_info(raw, field)
        kwargs = {
            python: convert(values[graphql], info)
            for graphql, python, convert in arguments
            if graphql in values
        }
        for name in source_names:
            kwargs[name] = source
        if info_name is not None:
            kwargs[info_name] = info
        return call(source, **kwargs) if takes_self else call(**kwargs)

    return direct


def _converter(schema: strawberry.Schema, type_: Any, path: tuple[str | int, ...]) -> Converter:
    """convert_argument's decisions for `type_`, made once."""
    registry = schema.schema_converter.scalar_registry
    config = schema.config
    if isinstance(type_, StrawberryMaybe) or not _convertible(type_, registry):

        def strawberry_converts(value: Any, info: Any) -> Any:
            return convert_argument(value, type_, registry, config, info, path=path)

        return strawberry_converts
    if isinstance(type_, StrawberryOptional):
        return _converter(schema, type_.of_type, path)
    if _is_leaf(type_, registry):
        return _as_it_is
    if isinstance(type_, StrawberryList):
        item = type_.of_type
        if _is_leaf(item, registry) or (
            isinstance(item, StrawberryOptional) and _is_leaf(item.of_type, registry)
        ):
            return _copied_list
        convert_item = _converter(schema, item, path)

        def converted_list(value: Any, info: Any) -> Any:
            if value is None or value is UNSET:
                return value
            return [convert_item(x, info) for x in value]

        return converted_list
    definition: StrawberryObjectDefinition = type_.__strawberry_definition__
    names = config.name_converter
    defaults = {
        f.python_name: None
        for f in definition.fields
        if f.default_value is MISSING and f.default_factory is MISSING
    }
    fields = [
        (
            names.from_field(f),
            f.python_name,
            _converter(schema, f.resolve_type(type_definition=definition), path),
        )
        for f in definition.fields
    ]

    def converted_input(value: Any, info: Any) -> Any:
        if value is None or value is UNSET:
            return value
        kwargs = dict(defaults)
        for graphql, python, convert in fields:
            if graphql in value:
                kwargs[python] = convert(value[graphql], info)
        return type_(**kwargs)

    return converted_input


def _convertible(type_: Any, registry: Mapping[object, Any]) -> bool:
    """Whether every type within `type_` is one this module converts itself."""
    if isinstance(type_, StrawberryMaybe):
        return False
    if isinstance(type_, StrawberryOptional | StrawberryList):
        return _convertible(type_.of_type, registry)
    if _is_leaf(type_, registry):
        return type_ is not strawberry.relay.GlobalID
    if has_object_definition(type_):
        definition = type_.__strawberry_definition__
        return (
            isinstance(definition, StrawberryObjectDefinition)
            and definition.is_input
            and definition.from_input is None
            and all(
                _convertible(f.resolve_type(type_definition=definition), registry)
                for f in definition.fields
            )
        )
    return False


def _is_leaf(type_: Any, registry: Mapping[object, Any]) -> bool:
    # Scalars and enums: graphql-core's coercion already made their Python values.
    if is_scalar(type_, registry) or isinstance(type_, StrawberryEnumDefinition):
        return True
    return isinstance(getattr(type_, "__strawberry_definition__", None), StrawberryEnumDefinition)


def _as_it_is(value: Any, info: Any) -> Any:
    return value


def _copied_list(value: Any, info: Any) -> Any:
    # graphql-core gives the same default list to every request that omits the value:
    # a resolver that changed it would change the next request's.
    if value is None or value is UNSET:
        return value
    return list(value)
