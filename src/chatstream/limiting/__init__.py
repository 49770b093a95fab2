"""The limits on what a caller may ask: request rates (`ratelimit`, on the `limits`
package's engine) and token quotas per owner and model (`quotas`)."""
