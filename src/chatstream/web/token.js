// The access token: asked for when the server refuses the page's (or it has none),
// kept in sessionStorage (gone when the tab closes).

const TOKEN_KEY = "chatstream.token";

export class TokenForm {
  /** `onToken()` is called once a new token is stored. */
  constructor({ form, input, reason }, onToken) {
    Object.assign(this, { form, input, reason });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      input.value = "";
      onToken();
    });
  }

  token() {
    return sessionStorage.getItem(TOKEN_KEY) ?? "";
  }

  ask(error) {
    const had = this.token() !== "";
    this.reason.textContent = error.code === "token_expired"
      ? "Your token has expired: paste a new one."
      : had ? `The server refused this token (${error.code}): paste another.`
        : "This server requires a token (CHATSTREAM_AUTH=jwt): paste a JWT.";
    this.form.hidden = false;
    this.input.focus();
  }

  hide() {
    this.form.hidden = true;
  }
}
