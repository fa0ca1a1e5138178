import { cleanup, fireEvent, render, screen } from '@testing-library/react';
import { afterEach, describe, expect, it } from 'vitest';
import { Attachments, formatSize, safeUrl } from './Attachments';

afterEach(cleanup);

describe('Attachments', () => {
  it('shows images inline (lightbox on click) and other files as chips with name, type and size', () => {
    render(
      <Attachments
        list={[
          { id: '1', filename: 'chart.png', mimeType: 'image/png', size: 2048, url: 'https://f.example/chart.png' },
          { id: '2', filename: 'report.pdf', mimeType: 'application/pdf', size: 1_234_567, url: 'https://f.example/r.pdf' },
        ]}
      />,
    );
    const img = screen.getByAltText('chart.png');
    expect(img.getAttribute('src')).toBe('https://f.example/chart.png');
    const chip = screen.getByTestId('attachment-file');
    expect(chip.textContent).toContain('report.pdf');
    expect(chip.textContent).toContain('application/pdf · 1.2 MB');
    expect(chip.querySelector('a')?.getAttribute('href')).toBe('https://f.example/r.pdf');
    fireEvent.click(screen.getByTestId('attachment-image'));
    expect(screen.getByTestId('lightbox')).toBeTruthy();
    fireEvent.keyDown(document, { key: 'Escape' });
    expect(screen.queryByTestId('lightbox')).toBeNull();
  });

  it('never links a hostile URL', () => {
    expect(safeUrl('javascript:alert(1)')).toBeNull();
    expect(safeUrl('data:text/html,<script>')).toBeNull();
    render(<Attachments list={[{ id: '1', filename: 'x.png', mimeType: 'image/png', size: 1, url: 'javascript:alert(1)' }]} />);
    expect(screen.queryByRole('img')).toBeNull();
    expect(screen.getByTestId('attachment-file').querySelector('a')).toBeNull();
    expect(formatSize(512)).toBe('512 B');
  });
});
