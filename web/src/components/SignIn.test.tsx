import { cleanup, fireEvent, render, screen, waitFor } from '@testing-library/react';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SignIn } from './SignIn';

afterEach(() => {
  cleanup();
  vi.unstubAllGlobals();
});

describe('SignIn', () => {
  it('signs in with a pasted token', () => {
    const onToken = vi.fn();
    render(<SignIn onToken={onToken} error={null} busy={false} />);
    fireEvent.change(screen.getByLabelText('Access token (JWT)'), { target: { value: ' abc.def.ghi ' } });
    fireEvent.click(screen.getByRole('button', { name: 'Sign in' }));
    expect(onToken).toHaveBeenCalledWith('abc.def.ghi');
  });

  it('uses the dev token endpoint when the gateway has one', async () => {
    const fetchMock = vi.fn(
      async () =>
        new Response(JSON.stringify({ success: true, data: { token: 'dev.jwt' } }), { status: 200 }),
    );
    vi.stubGlobal('fetch', fetchMock);
    const onToken = vi.fn();
    render(<SignIn onToken={onToken} error={null} busy={false} />);
    fireEvent.change(screen.getByLabelText('User id'), { target: { value: 'user-7' } });
    fireEvent.click(screen.getByRole('button', { name: 'Dev sign-in' }));
    await waitFor(() => expect(onToken).toHaveBeenCalledWith('dev.jwt'));
    expect(String(fetchMock.mock.calls[0]?.[0 as never])).toBe('/v1/dev/token?sub=user-7&kind=user');
  });

  it('says so when the gateway has no dev sign-in', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response('{}', { status: 404 })));
    const onToken = vi.fn();
    render(<SignIn onToken={onToken} error={null} busy={false} />);
    fireEvent.click(screen.getByRole('button', { name: 'Dev sign-in' }));
    expect((await screen.findByRole('alert')).textContent).toMatch(/no development sign-in/);
    expect(onToken).not.toHaveBeenCalled();
  });
});
