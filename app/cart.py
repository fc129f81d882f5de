"""A shopping cart kept in the session as ``{product_id: quantity}``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quart import (
    Blueprint,
    ResponseReturnValue,
    abort,
    redirect,
    render_template,
    request,
    session,
    url_for,
)

from quartsess import exclusive

from .flashes import flash

bp = Blueprint("cart", __name__, url_prefix="/cart")

MAX_QUANTITY = 99


@dataclass(frozen=True)
class Product:
    """Something to buy; prices are whole cents so totals add up exactly."""

    id: str
    name: str
    price_cents: int


PRODUCTS: dict[str, Product] = {
    product.id: product
    for product in (
        Product("tea", "Loose-leaf tea, 100 g", 650),
        Product("mug", "Stoneware mug", 1200),
        Product("kettle", "Gooseneck kettle", 4500),
        Product("biscuits", "Shortbread biscuits", 399),
    )
}


@dataclass(frozen=True)
class Line:
    """One row of the cart as shown on the page."""

    product: Product
    quantity: int

    @property
    def subtotal_cents(self) -> int:
        return self.product.price_cents * self.quantity


def money(cents: int) -> str:
    """``1234`` -> ``"€12.34"``."""
    return f"€{cents // 100}.{cents % 100:02d}"


def cart_items() -> dict[str, int]:
    """The session's cart, created empty on first change."""
    cart: dict[str, int] = session.setdefault("cart", {})
    return cart


def cart_lines() -> list[Line]:
    """The cart's rows in catalogue order (without creating a cart)."""
    stored: dict[str, Any] = session.get("cart") or {}
    return [
        Line(product, stored[product.id]) for product in PRODUCTS.values() if product.id in stored
    ]


def cart_count() -> int:
    """How many items are in the cart."""
    return sum(line.quantity for line in cart_lines())


async def _form_product(*, in_cart: bool) -> str:
    form = await request.form
    product_id = str(form.get("product_id", ""))
    if product_id not in PRODUCTS:
        abort(404, description="There is no such product.")
    if in_cart and product_id not in (session.get("cart") or {}):
        abort(404, description="That product is not in your cart.")
    return product_id


async def _form_quantity(default: int | None = None) -> int:
    raw = (await request.form).get("quantity")
    if raw is None or raw == "":
        if default is None:
            abort(400, description="Say how many you want.")
        return default
    try:
        quantity = int(raw)
    except ValueError:
        abort(400, description="The quantity must be a whole number.")
    if not 0 <= quantity <= MAX_QUANTITY:
        abort(400, description=f"The quantity must be between 0 and {MAX_QUANTITY}.")
    return quantity


@bp.get("/")
async def show() -> ResponseReturnValue:
    """The product list and the cart with its total."""
    lines = cart_lines()
    return await render_template(
        "cart.html",
        products=list(PRODUCTS.values()),
        lines=lines,
        total_cents=sum(line.subtotal_cents for line in lines),
        max_quantity=MAX_QUANTITY,
    )


@bp.post("/add")
@exclusive
async def add() -> ResponseReturnValue:
    """Add some of a product (one by default), up to the maximum."""
    product_id = await _form_product(in_cart=False)
    quantity = await _form_quantity(default=1)
    if quantity < 1:
        abort(400, description="Add at least one.")
    cart = cart_items()
    # An in-place change to a nested value: quartsess notices it without session.modified.
    cart[product_id] = min(cart.get(product_id, 0) + quantity, MAX_QUANTITY)
    await flash(f"Added {PRODUCTS[product_id].name} to your cart.", "success")
    return redirect(url_for("cart.show"))


@bp.post("/update")
@exclusive
async def update() -> ResponseReturnValue:
    """Set the quantity of a product in the cart; 0 removes it."""
    product_id = await _form_product(in_cart=True)
    quantity = await _form_quantity()
    cart = cart_items()
    if quantity == 0:
        del cart[product_id]
        await flash(f"Removed {PRODUCTS[product_id].name}.", "info")
    else:
        cart[product_id] = quantity
        await flash(f"Updated {PRODUCTS[product_id].name}.", "success")
    return redirect(url_for("cart.show"))


@bp.post("/remove")
@exclusive
async def remove() -> ResponseReturnValue:
    """Take a product out of the cart."""
    product_id = await _form_product(in_cart=True)
    del cart_items()[product_id]
    await flash(f"Removed {PRODUCTS[product_id].name}.", "info")
    return redirect(url_for("cart.show"))


@bp.post("/clear")
@exclusive
async def clear() -> ResponseReturnValue:
    """Empty the cart."""
    session.pop("cart", None)
    await flash("Your cart is empty now.", "info")
    return redirect(url_for("cart.show"))
